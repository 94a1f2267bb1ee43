from batchctl.cli.app import main

raise SystemExit(main())
