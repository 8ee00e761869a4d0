package rampart.jvm;

import java.io.IOException;
import java.io.InputStream;
import java.lang.reflect.Method;
import java.net.ProtocolFamily;
import java.net.SocketAddress;
import java.net.StandardProtocolFamily;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * The probe's link to the agent: a bounded queue the app's threads offer events to (never
 * waiting), one daemon thread that connects, says hello, writes batches and heartbeats, and
 * one daemon reader thread per connection that applies the tables the agent pushes.
 *
 * <p>Two routes, same frames and semantics: the agent's Unix socket (Unix-domain
 * SocketChannel, JDK 16+, reached by reflection because the probe is compiled for Java 8),
 * or the FIFO pair the agent made for this pid (JDK 8-15, or forced: {@link FifoLink}).
 */
final class Transport {
    static final int QUEUE = 4096;
    static final int BATCH = 256;
    /** how long the sender waits after the first event of a batch for more to come */
    static final long LINGER_MS = 5;
    static final long HEARTBEAT_MS = 10000;
    static final long BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 30000;

    private final Probe probe;
    private final String socketPath;
    /** the agent's FIFO pair directory for this pid, or null for the Unix socket */
    private final String fifoDir;
    final ArrayBlockingQueue<Map<String, Object>> queue = new ArrayBlockingQueue<Map<String, Object>>(QUEUE);
    private final Thread sender;
    private volatile boolean running = true;
    private volatile Link channel;
    /** set by the reader when the connection broke; the sender reconnects */
    private volatile boolean broken;
    /** a second attach asks for a fresh hello with already_running: true */
    volatile boolean helloAgain;
    volatile boolean connected;

    Transport(Probe probe, String socketPath, String fifoDir) {
        this.probe = probe;
        this.socketPath = socketPath;
        this.fifoDir = fifoDir;
        sender = new Thread(new Runnable() {
            @Override
            public void run() {
                Hooks.markInternal();
                loop();
            }
        }, "rampart-sender");
        sender.setDaemon(true);
    }

    static boolean supported() {
        try {
            Class.forName("java.net.UnixDomainSocketAddress");
            return true;
        } catch (ClassNotFoundException e) {
            return false;
        }
    }

    void start() {
        sender.start();
    }

    /** From any thread: hand over one event, or drop and count it. */
    void offer(Map<String, Object> event) {
        if (!connected) {
            probe.drop("agent_away");
        } else if (!queue.offer(event)) {
            probe.drop("queue_full");
        }
    }

    /**
     * Reconnect delay: doubles on every failed or refused connection, back to the minimum
     * only once the agent has accepted the probe (its first table arrived), so an agent
     * that refuses the hello is not hammered.
     */
    private volatile long backoff = BACKOFF_MIN_MS;

    private void loop() {
        long nextConnect = 0;
        long nextHeartbeat = 0;
        boolean immediate = false; // reconnect at once (a fresh hello was asked for)
        List<Map<String, Object>> batch = new ArrayList<Map<String, Object>>(BATCH);
        while (running) {
            try {
                if (channel == null || broken) {
                    long now = System.currentTimeMillis();
                    if (channel != null) { // a connection just ended: wait before the next
                        closeChannel();
                        nextConnect = immediate ? 0 : now + nextDelay();
                        immediate = false;
                    }
                    if (now < nextConnect && !helloAgain) { // a second attach cuts the wait short
                        dropQueued();
                        Thread.sleep(Math.min(100, nextConnect - now));
                        continue;
                    }
                    try {
                        helloAgain = false; // this connection's hello says already_running
                        connect();
                        nextHeartbeat = System.currentTimeMillis() + HEARTBEAT_MS;
                    } catch (IOException e) {
                        nextConnect = System.currentTimeMillis() + nextDelay();
                        continue;
                    }
                }
                if (helloAgain) {
                    helloAgain = false;
                    if (fifoDir != null) {
                        // FIFO route: say hello again on the live stream (the agent takes a
                        // re-hello there). Closing and reopening `up` instead races the agent's
                        // check that this pid holds `up` open when the hello is read.
                        write(Protocol.encode(probe.hello(true)));
                        continue;
                    }
                    // socket route: the agent takes one hello per connection, and a new
                    // connection from the same process replaces the old one: reconnect, the
                    // hello says already_running
                    broken = true;
                    immediate = true;
                    continue;
                }
                Map<String, Object> first = queue.poll(200, TimeUnit.MILLISECONDS);
                if (first != null) {
                    // Linger before draining: events offered meanwhile find no waiting
                    // sender to wake (the app thread's offer then makes no futex call) and
                    // leave in one write; a steady stream wakes this thread ~1/LINGER_MS
                    // times a second instead of once per event.
                    if (queue.size() < BATCH - 1) Thread.sleep(LINGER_MS);
                    batch.add(first);
                    queue.drainTo(batch, BATCH - 1);
                    writeBatch(batch);
                    batch.clear();
                }
                long now = System.currentTimeMillis();
                if (now >= nextHeartbeat) {
                    write(Protocol.encode(probe.heartbeat()));
                    nextHeartbeat = now + HEARTBEAT_MS;
                }
            } catch (InterruptedException e) {
                break;
            } catch (IOException e) {
                broken = true; // the top of the loop closes it and schedules the reconnect
                probe.dropMany("agent_away", batch.size());
                batch.clear();
            } catch (Throwable t) {
                // a bug in the probe must not kill the sender: count, forget the batch, go on
                probe.dropMany("error", batch.size());
                batch.clear();
                Log.warn("sender: " + t);
            }
        }
    }

    private long nextDelay() {
        long d = backoff;
        backoff = Math.min(BACKOFF_MAX_MS, d * 2);
        return d;
    }

    private void dropQueued() {
        int n = 0;
        while (queue.poll() != null) n++;
        if (n > 0) probe.dropMany("agent_away", n);
    }

    /** the sender's encoding buffers, reused batch after batch */
    private final FrameBuffer frames = new FrameBuffer();

    private void writeBatch(List<Map<String, Object>> batch) throws IOException {
        frames.clear();
        for (Map<String, Object> event : batch) {
            if (!frames.add(event, Protocol.MAX_FRAME)) probe.drop("too_large");
        }
        int n = frames.frames();
        if (n == 0) return;
        writeFully(frames.contents());
        probe.sent(n);
    }

    private void write(byte[] frame) throws IOException {
        writeFully(ByteBuffer.wrap(frame));
    }

    private void writeFully(ByteBuffer buf) throws IOException {
        Link ch = channel;
        if (ch == null) throw new IOException("not connected");
        ch.write(buf);
    }

    /** the reader of the previous connection (FIFO route: waited for before reconnecting) */
    private Thread lastReader;

    private void connect() throws IOException {
        if (fifoDir != null && lastReader != null) {
            // A FIFO session ends when the agent sees our writer go: it then closes its end of
            // `down` (our old reader sees end-of-file and exits) and makes fresh FIFOs. Opening
            // the paths before that would reach the old inodes, so wait for the old reader.
            try {
                lastReader.join(FifoLink.OPEN_TIMEOUT_MS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IOException("interrupted");
            }
        }
        final Link ch = fifoDir != null ? FifoLink.open(fifoDir) : new SocketLink(openUnix(socketPath));
        channel = ch;
        broken = false;
        write(Protocol.encode(probe.hello(probe.helloCount() > 0)));
        connected = true;
        Thread reader = new Thread(new Runnable() {
            @Override
            public void run() {
                Hooks.markInternal();
                read(ch);
            }
        }, "rampart-reader");
        reader.setDaemon(true);
        reader.start();
        lastReader = reader;
    }

    static SocketChannel openUnix(String path) throws IOException {
        try {
            Class<?> udsa = Class.forName("java.net.UnixDomainSocketAddress");
            Object address = udsa.getMethod("of", String.class).invoke(null, path);
            ProtocolFamily unix = StandardProtocolFamily.valueOf("UNIX");
            Method open = SocketChannel.class.getMethod("open", ProtocolFamily.class);
            SocketChannel ch = (SocketChannel) open.invoke(null, unix);
            try {
                ch.connect((SocketAddress) address);
            } catch (IOException e) {
                ch.close();
                throw e;
            }
            return ch;
        } catch (IOException e) {
            throw e;
        } catch (java.lang.reflect.InvocationTargetException e) {
            Throwable c = e.getCause();
            if (c instanceof IOException) throw (IOException) c;
            throw new IOException(c);
        } catch (Exception e) {
            throw new IOException(e);
        }
    }

    private void read(final Link ch) {
        InputStream in = ch.input();
        try {
            while (running && channel == ch) {
                byte[] body = Protocol.readFrame(in, Protocol.MAX_FRAME);
                if (body == null) break;
                Map<String, Object> message;
                try {
                    message = Protocol.decodeFromAgent(body);
                } catch (Protocol.DecodeError e) {
                    if ("truncated".equals(e.code) || "too_large".equals(e.code)) throw e;
                    Log.warn("ignored a frame from the agent: " + e.getMessage());
                    continue;
                }
                if ((Long) message.get("message_type") != Protocol.ERROR) backoff = BACKOFF_MIN_MS;
                probe.onAgentMessage(message);
            }
        } catch (Exception e) {
            // connection gone or corrupt: the sender reconnects with backoff
        }
        if (channel == ch) {
            connected = false;
            broken = true;
        }
    }

    private void closeChannel() {
        connected = false;
        Link ch = channel;
        channel = null;
        if (ch != null) ch.close();
    }

    /** Stops the sender; sends {@code exit} first if connected (best effort, bounded). */
    void stop(String reason) {
        running = false; // the sender sees it within one poll (200 ms); no interrupt, which
        // would close the channel under it (ClosedByInterruptException)
        try {
            sender.join(2000);
        } catch (InterruptedException ignored) {
            Thread.currentThread().interrupt();
        }
        Link ch = channel;
        if (ch != null && connected) {
            try {
                // the sender has stopped: this thread is the only writer now
                write(Protocol.encode(probe.exit(reason)));
            } catch (IOException ignored) {
                // the agent is gone: nothing to tell
            }
        }
        closeChannel();
    }

    /** One connection to the agent: a byte stream each way. */
    interface Link {
        /** writes all of buf, blocking this (the sender) thread only */
        void write(ByteBuffer buf) throws IOException;

        InputStream input();

        void close();
    }

    static final class SocketLink implements Link {
        private final SocketChannel ch;

        SocketLink(SocketChannel ch) {
            this.ch = ch;
        }

        @Override
        public void write(ByteBuffer buf) throws IOException {
            while (buf.hasRemaining()) ch.write(buf);
        }

        @Override
        public InputStream input() {
            return new InputStream() {
                private final ByteBuffer one = ByteBuffer.allocate(1);

                @Override
                public int read() throws IOException {
                    one.clear();
                    int n = ch.read(one);
                    return n <= 0 ? -1 : one.get(0) & 0xff;
                }

                @Override
                public int read(byte[] b, int off, int len) throws IOException {
                    return ch.read(ByteBuffer.wrap(b, off, len));
                }
            };
        }

        @Override
        public void close() {
            try {
                ch.close();
            } catch (IOException ignored) {
                // closing a broken socket
            }
        }
    }
}
