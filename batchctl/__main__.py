from batchctl.cli.entry import main

raise SystemExit(main())
