from fipframe.cli import main

raise SystemExit(main())
