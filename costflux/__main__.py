from costflux.cli import main

raise SystemExit(main())
