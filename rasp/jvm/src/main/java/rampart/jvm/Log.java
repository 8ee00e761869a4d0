package rampart.jvm;

/**
 * The probe's only log: one line on the app's stderr, prefixed so it is recognisable. Used
 * for rare events (start, a hook disabled, a refused rule), never per call.
 */
final class Log {
    private Log() {}

    static void info(String message) {
        System.err.println("[rampart] " + message);
    }

    static void warn(String message) {
        System.err.println("[rampart] warning: " + message);
    }
}
