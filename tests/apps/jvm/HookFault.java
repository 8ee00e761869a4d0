// Fault injection for the JVM probe's "a failing hook disables itself" rule. Run with the
// probe as -javaagent, compiled against the agent jar:
//
//   java -javaagent:rampart-jvm-agent.jar=socket=S -cp build/tests/jvm:rampart-jvm-agent.jar HookFault
//
// It calls the process hook's callback the way no instrumented method would (an argument of
// the wrong type), so the callback throws inside the probe; then it runs a real command and
// reads a real file once the test says go (a line on stdin: the probe has said hello by
// then). Prints one line per step; the test checks them and the agent's events.

import java.io.FileInputStream;

public class HookFault {
    public static void main(String[] args) throws Exception {
        // ProcessImpl.start's first argument is a String[]: a String makes the probe throw
        rampart.jvm.Hooks.enter(0, null, new Object[] {"not a String[]", null, null, null, false});
        System.out.println("callback returned");
        System.out.flush();
        new java.io.BufferedReader(new java.io.InputStreamReader(System.in)).readLine(); // go
        Process p = new ProcessBuilder("echo", "after-fault").start();
        System.out.println("exec exit " + p.waitFor());
        new FileInputStream(args[0]).close();
        System.out.println("read ok");
        System.out.flush();
        Thread.sleep(60_000); // stay alive until the test has read the events, then is killed
    }
}
