from ratewatch.cli import main

main()
