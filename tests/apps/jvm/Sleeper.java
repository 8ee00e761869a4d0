// A JVM victim that does nothing but stay alive: run in source-file mode (JEP 330),
// `java tests/apps/jvm/Sleeper.java`, so the tests need no javac step or build output.
public class Sleeper {
    public static void main(String[] args) throws InterruptedException {
        System.out.println("ready");
        System.out.flush();
        while (true) {
            Thread.sleep(1000);
        }
    }
}
