from medsam2.cli.main import app

app(prog_name="medsam2")
