import sys
from mptc.cli import main
sys.exit(main())
