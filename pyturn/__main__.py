from pyturn.ops.cli import main

raise SystemExit(main())
