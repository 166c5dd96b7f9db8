from pyturn.service.cli import main

raise SystemExit(main())
