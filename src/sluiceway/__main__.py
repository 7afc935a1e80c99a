from sluiceway.cli import main

raise SystemExit(main())
