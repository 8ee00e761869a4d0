/*
 * rampart_pyinject.so: loaded into a running CPython by pyinjector (ptrace + dlopen), it
 * runs one bootstrap string under the GIL. Built by scripts/build.d/30-python-probe.sh.
 *
 * Why a new thread: pyinjector runs the constructor on the hijacked main thread (tid == pid),
 * interrupted wherever it was, maybe holding the GIL or inside malloc. The constructor only
 * copies the bootstrap and starts a detached pthread, then returns at once; that thread takes
 * the GIL the supported way (PyGILState_Ensure), runs the bootstrap, and releases it.
 *
 * Why dlsym(RTLD_DEFAULT): no link against libpython, so one .so serves every CPython
 * 3.8-3.13, with libpython shared (pyenv) or linked statically into the executable
 * (Debian's /usr/bin/python3, which exports the symbols) -- platform-facts §3, §4.2.
 *
 * Why the bootstrap lives in this file's data: the attacher writes it over the placeholder
 * in a private per-attach copy of this .so and unlinks the copy as soon as the injection
 * returns, so no file with the parameters is left behind (docs/python-probe.md).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BOOTSTRAP_SIZE 16384
#define PLACEHOLDER "RAMPART-BOOTSTRAP-PLACEHOLDER"

/* volatile: the compiler must read what the attacher wrote, not fold the initialiser */
__attribute__((used, aligned(16))) volatile char rampart_bootstrap[BOOTSTRAP_SIZE] = PLACEHOLDER;

typedef int (*int_fn)(void);
typedef int (*ensure_fn)(void);
typedef void (*release_fn)(int);
typedef int (*run_fn)(const char *);

static void *bootstrap_thread(void *arg) {
    char *code = arg;
    int_fn is_initialized = (int_fn)dlsym(RTLD_DEFAULT, "Py_IsInitialized");
    ensure_fn gil_ensure = (ensure_fn)dlsym(RTLD_DEFAULT, "PyGILState_Ensure");
    release_fn gil_release = (release_fn)dlsym(RTLD_DEFAULT, "PyGILState_Release");
    run_fn run = (run_fn)dlsym(RTLD_DEFAULT, "PyRun_SimpleString");
    if (is_initialized && gil_ensure && gil_release && run) {
        /* a process injected during start-up: wait (at most 10 s) for the interpreter */
        for (int i = 0; i < 1000 && !is_initialized(); i++)
            usleep(10000);
        if (is_initialized()) {
            int state = gil_ensure();
            run(code);
            gil_release(state);
        }
    }
    free(code);
    return NULL;
}

__attribute__((constructor)) static void rampart_pyinject_init(void) {
    char *code = strndup((const char *)rampart_bootstrap, BOOTSTRAP_SIZE - 1);
    if (code == NULL)
        return;
    if (strcmp(code, PLACEHOLDER) == 0) { /* the pristine build output: nothing to run */
        free(code);
        return;
    }
    pthread_attr_t attr;
    pthread_t thread;
    sigset_t all, old;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* the new thread blocks every signal: they stay the app's main thread's business */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    if (pthread_create(&thread, &attr, bootstrap_thread, code) != 0)
        free(code);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
}
