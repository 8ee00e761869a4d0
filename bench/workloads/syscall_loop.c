// Workloads for bench/driver.py: tight loops of the syscalls the driver hooks, timed in C so
// the driver's cost is not hidden under an interpreter's. Prints ns per operation: wall time,
// then, with SYSCALL_LOOP_CPU set in the environment, this process's CPU time (user + system; the BPF programs run in its system time, and
// waiting for a CPU on a loaded machine is not in it).
//   syscall_loop connect N PORT   socket + connect (to a closed loopback port) + close
//   syscall_loop udpconnect N PORT  connect one UDP socket again and again (no packet sent):
//                                  the cheapest syscall that makes a driver record (storms)
//   syscall_loop udpscan N PORT     the same to PORT, PORT+1, ... PORT+19999 in turn (loopback, no
//                                  packet sent): a storm of records that differ (a port scan)
//   syscall_loop exec N           fork + execve("/bin/true") + waitpid
//   syscall_loop getpid N         a syscall no handler is registered for (dispatch cost only)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	long n = atol(argv[2]);
	long long t0 = now_ns();
	if (!strcmp(argv[1], "connect") && argc == 4) {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		for (long i = 0; i < n; i++) {
			int s = socket(AF_INET, SOCK_STREAM, 0);
			connect(s, (struct sockaddr *)&a, sizeof(a));
			close(s);
		}
	} else if (!strcmp(argv[1], "udpconnect") && argc == 4) {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		int s = socket(AF_INET, SOCK_DGRAM, 0);
		for (long i = 0; i < n; i++)
			connect(s, (struct sockaddr *)&a, sizeof(a));
		close(s);
	} else if (!strcmp(argv[1], "udpscan") && argc == 4) {
		int base = atoi(argv[3]);
		struct sockaddr_in a = {.sin_family = AF_INET};
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		int s = socket(AF_INET, SOCK_DGRAM, 0);
		for (long i = 0; i < n; i++) {
			a.sin_port = htons(base + i % 20000);
			connect(s, (struct sockaddr *)&a, sizeof(a));
		}
		close(s);
	} else if (!strcmp(argv[1], "exec")) {
		for (long i = 0; i < n; i++) {
			pid_t p = fork();
			if (p == 0) {
				execl("/bin/true", "true", (char *)NULL);
				_exit(127);
			}
			waitpid(p, NULL, 0);
		}
	} else if (!strcmp(argv[1], "getpid")) {
		for (long i = 0; i < n; i++)
			syscall(SYS_getpid);
	} else {
		return 2;
	}
	double wall = (double)(now_ns() - t0) / n;
	double cpu = 0;
	int who[2] = {RUSAGE_SELF, RUSAGE_CHILDREN}; /* the exec'd children run the exec hook */
	for (int i = 0; i < 2; i++) {
		struct rusage ru;
		getrusage(who[i], &ru);
		cpu += (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e9 +
		       (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e3;
	}
	if (getenv("SYSCALL_LOOP_CPU"))
		printf("%.1f %.1f\n", wall, cpu / n);
	else
		printf("%.1f\n", wall); /* what bench/enforce.py reads */
	return 0;
}
