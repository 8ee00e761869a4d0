package rampart.jvm;

import java.io.Closeable;
import java.io.File;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;

/**
 * The route to the agent for JDK 8-15 (no Unix-domain sockets), or when forced: the two FIFOs
 * the agent made for this pid ({@code up}: our frames to the agent, {@code down}: its frames
 * to us), opened with plain {@link FileOutputStream}/{@link FileInputStream}. The agent
 * checks that this pid holds {@code up} open before it takes the hello, and gives every
 * session fresh FIFO inodes: when it ends one, our writes fail (EPIPE) and our reads end,
 * and the sender reconnects by opening the paths again (host_agent/fifo.py, docs/protocol.md).
 *
 * <p>Opening a FIFO blocks until the other side is open. The agent keeps both ends open while
 * it lives, so that is instant; if it died without removing the pair, the open would wait
 * forever, so it runs on a helper thread and is released after {@link #OPEN_TIMEOUT_MS} by
 * opening the FIFO read-write ourselves (which never blocks and satisfies the waiting open).
 */
final class FifoLink implements Transport.Link {
    static final long OPEN_TIMEOUT_MS = 2000;

    private final FileOutputStream up;
    private final FileInputStream down;

    private FifoLink(FileOutputStream up, FileInputStream down) {
        this.up = up;
        this.down = down;
    }

    static FifoLink open(String dir) throws IOException {
        File upPath = new File(dir, "up");
        File downPath = new File(dir, "down");
        // the agent renews the pair between sessions (unlink, mkfifo: microseconds apart)
        for (int i = 0; i < 20 && !(upPath.exists() && downPath.exists()); i++) {
            try {
                Thread.sleep(10);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
        }
        if (!upPath.exists() || !downPath.exists()) throw new IOException("no FIFO pair in " + dir);
        // up first: the agent's hello check looks for it among our descriptors
        FileOutputStream up = (FileOutputStream) timedOpen(upPath, true);
        try {
            return new FifoLink(up, (FileInputStream) timedOpen(downPath, false));
        } catch (IOException e) {
            quietClose(up);
            throw e;
        }
    }

    private static Closeable timedOpen(final File fifo, final boolean write) throws IOException {
        final Closeable[] opened = new Closeable[1];
        final IOException[] failed = new IOException[1];
        Thread opener = new Thread(new Runnable() {
            @Override
            public void run() {
                Hooks.markInternal(); // our own file opens are not the app's events
                try {
                    opened[0] = write ? new FileOutputStream(fifo) : new FileInputStream(fifo);
                } catch (IOException e) {
                    failed[0] = e;
                }
            }
        }, "rampart-fifo-open");
        opener.setDaemon(true);
        opener.start();
        try {
            opener.join(OPEN_TIMEOUT_MS);
            if (opener.isAlive()) {
                // nobody on the other side: release the open by being that side, then give up
                RandomAccessFile release = new RandomAccessFile(fifo, "rw");
                try {
                    opener.join(OPEN_TIMEOUT_MS);
                } finally {
                    quietClose(release);
                }
                quietClose(opened[0]);
                throw new IOException("the agent does not hold " + fifo + " open");
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted opening " + fifo);
        }
        if (failed[0] != null) throw failed[0];
        return opened[0];
    }

    @Override
    public void write(ByteBuffer buf) throws IOException {
        if (buf.hasArray()) {
            up.write(buf.array(), buf.arrayOffset() + buf.position(), buf.remaining());
            buf.position(buf.limit());
        } else {
            byte[] b = new byte[buf.remaining()];
            buf.get(b);
            up.write(b);
        }
    }

    @Override
    public InputStream input() {
        return down;
    }

    @Override
    public void close() {
        quietClose(up);
        quietClose(down);
    }

    private static void quietClose(Closeable c) {
        if (c == null) return;
        try {
            c.close();
        } catch (IOException ignored) {
            // nothing to do about a FIFO that will not close
        }
    }
}
