module rampart/tests/vulnapp

go 1.21
