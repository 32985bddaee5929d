from worldmodels.cli import main

raise SystemExit(main())
