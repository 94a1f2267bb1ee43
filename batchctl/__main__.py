from batchctl.cli.entry import console

console()
