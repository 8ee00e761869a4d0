package rampart.jvm;

import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.util.List;
import java.util.Map;

/**
 * Checks this probe's block-mode detection checks ({@link Detect}) against the shared corpus
 * (rasp/protocol/vectors/detect.json, docs/detection.md "Block mode"):
 * {@code java -cp rampart-jvm-agent.jar rampart.jvm.DetectCheck detect.json [--bench N]}.
 * Prints one line per failure and a closing "N passed, N failed"; exits 1 on any failure.
 * With {@code --bench N}: also the ns per check of each case, N calls each after a warm-up.
 */
public final class DetectCheck {
    private DetectCheck() {}

    @SuppressWarnings("unchecked")
    public static void main(String[] argv) throws Exception {
        Map<String, Object> doc = (Map<String, Object>) Json.parse(readAll(new FileInputStream(argv[0])));
        int bench = argv.length > 2 && "--bench".equals(argv[1]) ? Integer.parseInt(argv[2]) : 0;
        List<Object> dflt = (List<Object>) doc.get("default_detect");
        int passed = 0, failed = 0;
        for (Object o : (List<Object>) doc.get("cases")) {
            Map<String, Object> c = (Map<String, Object>) o;
            List<Object> specs = c.containsKey("detect") ? (List<Object>) c.get("detect") : dflt;
            Detect d = new Detect(specs);
            String kind = (String) c.get("kind"), hook = (String) c.get("hook");
            List<String> args = (List<String>) (List<?>) c.get("args");
            Map<String, Object> req = (Map<String, Object>) c.get("request");
            String got = d.check(kind, hook, args, req);
            Object want = c.get("expect");
            if (want == null ? got == null : want.equals(got)) {
                passed++;
            } else {
                failed++;
                System.out.println("FAIL " + c.get("name") + ": got " + got + ", want " + want);
            }
            if (bench > 0) {
                for (int i = 0; i < bench; i++) d.check(kind, hook, args, req);
                long t = System.nanoTime();
                for (int i = 0; i < bench; i++) d.check(kind, hook, args, req);
                System.out.println("ns " + c.get("name") + " " + (System.nanoTime() - t) / bench);
            }
        }
        System.out.println(passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }

    private static byte[] readAll(InputStream in) throws IOException {
        try {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buf = new byte[8192];
            for (int n; (n = in.read(buf)) > 0; ) out.write(buf, 0, n);
            return out.toByteArray();
        } finally {
            in.close();
        }
    }
}
