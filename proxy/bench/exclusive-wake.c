// Which threads a new connection wakes when two threads, each sleeping in its own epoll, accept
// from one listening socket: vsockproxy's forwarding threads (proxy/src/workers.rs), in C so that
// the epoll flags can be chosen freely (tokio registers every fd edge-triggered, never
// EPOLLEXCLUSIVE). Three registrations of the listener in each thread's epoll:
//   0  EPOLLIN|EPOLLET directly: what tokio does today;
//   1  an inner epoll per thread holding the listener EPOLLIN|EPOLLEXCLUSIVE, the inner epoll in
//      the thread's epoll EPOLLIN|EPOLLET: what a tokio program can do (AsyncFd on the inner fd);
//   2  EPOLLIN|EPOLLEXCLUSIVE directly in the epoll the thread sleeps in: what tokio cannot do.
// The main thread makes K connections one at a time (2 ms apart, so both threads are asleep
// when each arrives). Per thread it prints the epoll_wait returns ("wakes"), accepts, accepts
// that found nothing (EAGAIN), and voluntary context switches (RUSAGE_THREAD: each time the
// thread went to sleep, so each kernel wake-up, including those after which epoll_wait found
// nothing ready and slept again without returning). Loopback only.
//
//   cc -O2 -pthread -o /tmp/exclusive-wake proxy/bench/exclusive-wake.c
//   for mode in 0 1 2; do /tmp/exclusive-wake $mode 1000; done
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static int listener, mode;
static atomic_int stop;
static long wakes[2], accepted[2], empty[2], switches[2];

static void add(int epfd, int fd, unsigned events) {
  struct epoll_event ev = {.events = events, .data.fd = fd};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev)) {
    perror("epoll_ctl");
    exit(1);
  }
}

static void *worker(void *arg) {
  int me = (int)(long)arg;
  int epfd = epoll_create1(EPOLL_CLOEXEC);
  if (mode == 0) {
    add(epfd, listener, EPOLLIN | EPOLLET);
  } else if (mode == 1) {
    int inner = epoll_create1(EPOLL_CLOEXEC);
    add(inner, listener, EPOLLIN | EPOLLEXCLUSIVE);
    add(epfd, inner, EPOLLIN | EPOLLET);
  } else {
    add(epfd, listener, EPOLLIN | EPOLLEXCLUSIVE);
  }
  struct epoll_event events[4];
  while (!atomic_load(&stop)) {
    if (epoll_wait(epfd, events, 4, 100) <= 0) continue;
    wakes[me]++;
    for (;;) {
      int c = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c < 0) {
        if (errno == EAGAIN) empty[me]++;
        break;
      }
      accepted[me]++;
      close(c);
    }
  }
  struct rusage ru;
  getrusage(RUSAGE_THREAD, &ru);
  switches[me] = ru.ru_nvcsw;
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODE(0|1|2) [CONNECTIONS]\n", argv[0]);
    return 2;
  }
  mode = atoi(argv[1]);
  int k = argc > 2 ? atoi(argv[2]) : 1000;
  listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof addr;
  if (bind(listener, (void *)&addr, sizeof addr) || listen(listener, 128) ||
      getsockname(listener, (void *)&addr, &len)) {
    perror("listen");
    return 1;
  }
  pthread_t threads[2];
  for (long i = 0; i < 2; i++) pthread_create(&threads[i], NULL, worker, (void *)i);
  usleep(100000);
  for (int i = 0; i < k; i++) {
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(c, (void *)&addr, sizeof addr)) {
      perror("connect");
      return 1;
    }
    usleep(2000);
    close(c);
  }
  usleep(200000);
  atomic_store(&stop, 1);
  for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
  static const char *names[] = {"direct, edge-triggered (tokio)", "nested epoll, EPOLLEXCLUSIVE",
                                "direct, EPOLLEXCLUSIVE"};
  printf("%-31s %d connections: wakes %ld+%ld, accepted %ld+%ld, EAGAIN %ld+%ld, "
         "context switches %ld+%ld\n",
         names[mode], k, wakes[0], wakes[1], accepted[0], accepted[1], empty[0], empty[1],
         switches[0], switches[1]);
  return 0;
}
