// The closed loop of every clr-* strategy, run by the C# application's own threads: N callers, each
// calling its ICaller back to back (perf_analyzer's concurrency mode), a warm-up with all of them
// running, then the latency of every call that completes inside the measured window. The harness
// calls Run once from Python (pythonnet releases the GIL for the call) and no Python thread calls
// the model while it runs. Compiled by mcs into the one InteropBench assembly (C# 7).

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Threading;

namespace InteropBench
{
    /// <summary>One caller's state: its own inputs and outputs, one call per CallOnce.</summary>
    public interface ICaller
    {
        void CallOnce();
    }

    /// <summary>What a closed loop measured: each completed call's latency in ns, the measured window
    /// in seconds, the first caller's error ("" if none), and which threads made the calls.</summary>
    public sealed class LoadResult
    {
        public long[] LatencyNs;
        public double WallS;
        public string Error = "";
        public int[] ManagedThreadIds;  // Environment.CurrentManagedThreadId of each caller
        public long[] NativeThreadIds;  // gettid() of each caller, comparable with Python's threading.get_native_id()
    }

    /// <summary>What an open loop measured, per request of the schedule: when it was sent and when it
    /// was done, in ns from the schedule's start (-1: never); the first caller's error ("" if none); whether
    /// the load stopped early because too many requests had missed the budget.</summary>
    public sealed class OpenResult
    {
        public long[] SendNs;
        public long[] DoneNs;
        public string Error = "";
        public bool StoppedEarly;
    }

    public static class ClosedLoop
    {
        [DllImport("libc.so.6", EntryPoint = "syscall")]
        static extern long Syscall(long number);
        const long SYS_gettid = 186;  // x86_64

        public static long NativeThreadId()
        {
            try { return Syscall(SYS_gettid); } catch (Exception) { return -1; }
        }

        public static LoadResult Run(ICaller[] callers, double durationS, double warmupS)
        {
            int n = callers.Length;
            var lat = new List<long>[n];
            var managed = new int[n];
            var native = new long[n];
            string error = null;
            object gate = new object();
            long freq = Stopwatch.Frequency;
            long measureFrom = 0, measureTo = 0;  // Stopwatch ticks, set once every caller is ready
            var ready = new CountdownEvent(n);
            var go = new ManualResetEvent(false);
            var threads = new Thread[n];
            for (int k = 0; k < n; k++)
            {
                int i = k;
                lat[i] = new List<long>(1 << 14);
                threads[i] = new Thread(() =>
                {
                    managed[i] = Environment.CurrentManagedThreadId;
                    native[i] = NativeThreadId();
                    ready.Signal();
                    go.WaitOne();
                    List<long> mine = lat[i];
                    ICaller c = callers[i];
                    try
                    {
                        while (true)
                        {
                            long t0 = Stopwatch.GetTimestamp();
                            c.CallOnce();
                            long t1 = Stopwatch.GetTimestamp();
                            if (t1 > measureTo) break;
                            if (t0 >= measureFrom) mine.Add((t1 - t0) * 1000000000L / freq);
                            if (Volatile.Read(ref error) != null) break;
                        }
                    }
                    catch (Exception e)
                    {
                        lock (gate) { if (error == null) error = e.GetType().FullName + ": " + e.Message; }
                    }
                });
                threads[i].IsBackground = true;
                threads[i].Start();
            }
            ready.Wait();
            long start = Stopwatch.GetTimestamp();
            measureFrom = start + (long)(warmupS * freq);
            measureTo = measureFrom + (long)(durationS * freq);
            Thread.MemoryBarrier();
            go.Set();
            foreach (Thread t in threads) t.Join();
            int total = 0;
            foreach (List<long> l in lat) total += l.Count;
            var all = new long[total];
            int at = 0;
            foreach (List<long> l in lat) { l.CopyTo(all, at); at += l.Count; }
            long end = Math.Min(Stopwatch.GetTimestamp(), measureTo);
            return new LoadResult
            {
                LatencyNs = all,
                WallS = Math.Max(0, end - measureFrom) / (double)freq,
                Error = error ?? "",
                ManagedThreadIds = managed,
                NativeThreadIds = native,
            };
        }

        /// <summary>Open loop: requests arrive at offsetsNs from the start whatever the callers are doing.
        /// Each caller takes the next request in schedule order, waits for its time (sleeping, then yielding
        /// for the last 1.5 ms), calls, and records when it sent and finished. With budgetNs > 0 the load
        /// stops once more than maxOver requests after the warm-up took over budgetNs from their arrival;
        /// with deadlineNs > 0 no request is sent after it.</summary>
        public static OpenResult RunOpen(ICaller[] callers, long[] offsetsNs, int warmupN, long budgetNs, int maxOver,
                                         long deadlineNs)
        {
            int n = callers.Length, total = offsetsNs.Length;
            var send = new long[total];
            var done = new long[total];
            for (int i = 0; i < total; i++) { send[i] = -1; done[i] = -1; }
            int next = -1, over = 0, stop = 0;
            string error = null;
            object gate = new object();
            double nsPerTick = 1e9 / Stopwatch.Frequency;
            long start = 0;
            var ready = new CountdownEvent(n);
            var go = new ManualResetEvent(false);
            var threads = new Thread[n];
            for (int k = 0; k < n; k++)
            {
                ICaller c = callers[k];
                threads[k] = new Thread(() =>
                {
                    ready.Signal();
                    go.WaitOne();
                    try
                    {
                        while (Volatile.Read(ref stop) == 0)
                        {
                            int i = Interlocked.Increment(ref next);
                            if (i >= total) break;
                            if (deadlineNs > 0 && (long)((Stopwatch.GetTimestamp() - start) * nsPerTick) > deadlineNs)
                            {
                                Volatile.Write(ref stop, 1);  // overloaded past the grace: the rest are never served
                                break;
                            }
                            long due = offsetsNs[i];
                            while (true)
                            {
                                long wait = due - (long)((Stopwatch.GetTimestamp() - start) * nsPerTick);
                                if (wait <= 0) break;
                                if (wait > 1500000) Thread.Sleep((int)((wait - 1000000) / 1000000));
                                else Thread.Yield();
                            }
                            long s = (long)((Stopwatch.GetTimestamp() - start) * nsPerTick);
                            c.CallOnce();
                            long e = (long)((Stopwatch.GetTimestamp() - start) * nsPerTick);
                            send[i] = s;
                            done[i] = e;
                            if (budgetNs > 0 && i >= warmupN && e - due > budgetNs && Interlocked.Increment(ref over) > maxOver)
                                Volatile.Write(ref stop, 1);
                        }
                    }
                    catch (Exception e)
                    {
                        lock (gate) { if (error == null) error = e.GetType().FullName + ": " + e.Message; }
                        Volatile.Write(ref stop, 1);
                    }
                });
                threads[k].IsBackground = true;
                threads[k].Start();
            }
            ready.Wait();
            start = Stopwatch.GetTimestamp() + Stopwatch.Frequency / 50;  // a 20 ms lead
            Thread.MemoryBarrier();
            go.Set();
            foreach (Thread t in threads) t.Join();
            return new OpenResult { SendNs = send, DoneNs = done, Error = error ?? "", StoppedEarly = stop != 0 && error == null };
        }

        /// <summary>Copy a long[] into a NumPy int64 buffer at `address`.</summary>
        public static void CopyLongs(long[] src, long address) { Marshal.Copy(src, 0, new IntPtr(address), src.Length); }
    }
}
