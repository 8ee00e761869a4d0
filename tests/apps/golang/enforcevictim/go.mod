module rampart.test/enforcevictim

go 1.21
