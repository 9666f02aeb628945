import sys

from pyro_vae.cli.main import main

sys.exit(main())
