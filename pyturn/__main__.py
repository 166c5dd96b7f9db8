from pyturn.cli import main

raise SystemExit(main())
