from autointerp_full.cli import main

raise SystemExit(main())
