from medsam2.cli.main import main

main()
