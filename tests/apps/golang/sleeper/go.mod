module rampart/tests/sleeper

go 1.21
