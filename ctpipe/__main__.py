from ctpipe.cli import main

main()
