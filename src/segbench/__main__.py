from segbench.cli import main

raise SystemExit(main())
