"""Unicode data shipped with the package (names.txt) and the script that regenerates it."""
