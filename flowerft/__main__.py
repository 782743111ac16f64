from flowerft.cli import main

main()
