// The C# application of the CLR strategy: it holds its inputs in .NET arrays, calls the PyTorch
// model through Python.Runtime (pythonnet) under Py.GIL(), and gets .NET arrays back.
//
// Two ways across the boundary:
//   bulk  (clr-embed): pinned .NET arrays copied with one memcpy into NumPy buffers (the buffer
//                      protocol gives the address), and back the same way;
//   naive (clr-naive): element by element through Python objects, as quick examples do.
//
// TimeCalls runs the timing loop here, inside the CLR, with System.Diagnostics.Stopwatch: the
// samples are what a C# caller sees, not the cost of Python calling into .NET. Compiled by mcs at
// prepare time (C# 7: no `using var`).

using System;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Python.Runtime;

namespace InteropBench
{
    /// <summary>A tensor on the .NET side: a primitive array (float16 kept as raw ushort bits) and a shape.</summary>
    public sealed class Tensor
    {
        public readonly string DType;   // NumPy's name: float32, int64, ...
        public readonly long[] Shape;
        public readonly Array Data;

        public Tensor(string dtype, long[] shape, Array data) { DType = dtype; Shape = shape; Data = data; }

        public long Count { get { long n = 1; foreach (long d in Shape) n *= d; return n; } }
        public long Bytes { get { return Count * Dtypes.ItemSize(DType); } }
    }

    /// <summary>One call's result: the outputs and where its time went, in Stopwatch ticks.</summary>
    public sealed class CallResult
    {
        public Tensor[] Outputs;
        public long MarshalInTicks, ComputeTicks, MarshalOutTicks, TotalTicks;
    }

    public sealed class Runner
    {
        public static long Frequency { get { return Stopwatch.Frequency; } }

        readonly PyObject model;     // callable(*ndarrays) -> tuple of C-contiguous ndarrays
        readonly PyObject npEmpty;   // numpy.empty
        readonly PyObject npArray;   // numpy.array
        readonly bool naive;

        public Runner(PyObject model, bool naive)
        {
            this.model = model;
            this.naive = naive;
            using (Py.GIL())
            using (PyObject np = Py.Import("numpy"))
            {
                npEmpty = np.GetAttr("empty");
                npArray = np.GetAttr("array");
            }
        }

        /// <summary>Untimed set-up: the C# application's own inputs, copied once from NumPy buffers into
        /// new .NET arrays. Each caller passes its set to Call, so concurrent callers never share one.</summary>
        public static Tensor[] NewInputs(string[] dtypes, long[][] shapes, long[] addresses)
        {
            var t = new Tensor[dtypes.Length];
            for (int i = 0; i < t.Length; i++)
            {
                t[i] = new Tensor(dtypes[i], shapes[i], Dtypes.NewArray(dtypes[i], Count(shapes[i])));
                CopyFromAddress(new IntPtr(addresses[i]), t[i]);
            }
            return t;
        }

        static long Count(long[] shape) { long n = 1; foreach (long d in shape) n *= d; return n; }

        // ---- bulk copies: pinned managed array <-> native buffer, one memcpy ----

        static unsafe void CopyFromAddress(IntPtr src, Tensor dst)
        {
            GCHandle h = GCHandle.Alloc(dst.Data, GCHandleType.Pinned);
            try { Buffer.MemoryCopy((void*)src, (void*)h.AddrOfPinnedObject(), dst.Bytes, dst.Bytes); }
            finally { h.Free(); }
        }

        static unsafe void CopyToAddress(Tensor src, IntPtr dst)
        {
            GCHandle h = GCHandle.Alloc(src.Data, GCHandleType.Pinned);
            try { Buffer.MemoryCopy((void*)h.AddrOfPinnedObject(), (void*)dst, src.Bytes, src.Bytes); }
            finally { h.Free(); }
        }

        /// <summary>Copy a .NET tensor into a NumPy buffer at `address` (for the harness's checks).</summary>
        public static void CopyOut(Tensor t, long address) { CopyToAddress(t, new IntPtr(address)); }

        /// <summary>Copy TimeCalls' figures into a NumPy int64 buffer at `address`.</summary>
        public static void CopyLongs(long[] src, long address) { Marshal.Copy(src, 0, new IntPtr(address), src.Length); }

        static PyObject ShapeTuple(long[] shape)
        {
            var dims = new PyObject[shape.Length];
            for (int i = 0; i < dims.Length; i++) dims[i] = new PyInt(shape[i]);
            var tuple = new PyTuple(dims);
            foreach (PyObject d in dims) d.Dispose();
            return tuple;
        }

        PyObject ToNumpyBulk(Tensor t)
        {
            using (PyObject shape = ShapeTuple(t.Shape))
            using (PyObject dtype = new PyString(t.DType))
            {
                PyObject arr = npEmpty.Invoke(shape, dtype);
                using (PyBuffer buf = arr.GetBuffer(PyBUF.C_CONTIGUOUS | PyBUF.WRITABLE))
                    CopyFromTensorTo(buf.Buffer, t);
                return arr;
            }
        }

        static void CopyFromTensorTo(IntPtr dst, Tensor t) { CopyToAddress(t, dst); }

        static Tensor FromNumpyBulk(PyObject arr)
        {
            string dtype = DTypeName(arr);  // PyBuffer.Format comes back null on Mono: ask NumPy
            using (PyBuffer buf = arr.GetBuffer(PyBUF.C_CONTIGUOUS))
            {
                long[] shape = buf.Shape ?? new long[0];
                var t = new Tensor(dtype, shape, Dtypes.NewArray(dtype, Count(shape)));
                CopyFromAddress(buf.Buffer, t);
                return t;
            }
        }

        static string DTypeName(PyObject arr)
        {
            using (PyObject d = arr.GetAttr("dtype"))
            using (PyObject n = d.GetAttr("name")) return n.As<string>();
        }

        // ---- naive copies: one Python object per element ----

        PyObject ToNumpyNaive(Tensor t)
        {
            if (t.DType == "float16") throw new NotSupportedException("clr-naive has no float16: .NET 4.x on Mono has no System.Half");
            using (var list = new PyList())
            {
                Array data = t.Data;
                for (long i = 0; i < data.LongLength; i++)
                {
                    using (PyObject item = ElementToPython(data, i, t.DType)) list.Append(item);
                }
                using (PyObject dtype = new PyString(t.DType))
                using (PyObject flat = npArray.Invoke(list, dtype))
                using (PyObject shape = ShapeTuple(t.Shape))
                    return flat.InvokeMethod("reshape", shape);
            }
        }

        static PyObject ElementToPython(Array data, long i, string dtype)
        {
            switch (dtype)
            {
                case "float32": return new PyFloat(((float[])data)[i]);
                case "float64": return new PyFloat(((double[])data)[i]);
                case "int64": return new PyInt(((long[])data)[i]);
                case "int32": return new PyInt(((int[])data)[i]);
                case "int8": return new PyInt(((sbyte[])data)[i]);
                case "uint8": return new PyInt(((byte[])data)[i]);
                case "bool": return ((bool[])data)[i] ? PyObject.FromManagedObject(true) : PyObject.FromManagedObject(false);
                default: throw new NotSupportedException("dtype " + dtype);
            }
        }

        static Tensor FromNumpyNaive(PyObject arr)
        {
            string dtype = DTypeName(arr);
            if (dtype == "float16") throw new NotSupportedException("clr-naive has no float16: .NET 4.x on Mono has no System.Half");
            long[] shape;
            using (PyObject s = arr.GetAttr("shape"))
            {
                shape = new long[s.Length()];
                for (int i = 0; i < shape.Length; i++)
                    using (PyObject dim = s[i]) shape[i] = dim.As<long>();
            }
            var t = new Tensor(dtype, shape, Dtypes.NewArray(dtype, Count(shape)));
            using (PyObject flat = arr.InvokeMethod("ravel"))
            using (PyObject list = flat.InvokeMethod("tolist"))
            {
                Array data = t.Data;
                long count = list.Length();
                for (long i = 0; i < count; i++)
                {
                    using (PyObject item = list[(int)i])
                    {
                        switch (dtype)
                        {
                            case "float32": ((float[])data)[i] = item.As<float>(); break;
                            case "float64": ((double[])data)[i] = item.As<double>(); break;
                            case "int64": ((long[])data)[i] = item.As<long>(); break;
                            case "int32": ((int[])data)[i] = item.As<int>(); break;
                            case "int8": ((sbyte[])data)[i] = item.As<sbyte>(); break;
                            case "uint8": ((byte[])data)[i] = item.As<byte>(); break;
                            case "bool": ((bool[])data)[i] = item.As<bool>(); break;
                            default: throw new NotSupportedException("dtype " + dtype);
                        }
                    }
                }
            }
            return t;
        }

        // ---- one call, as the C# application makes it ----

        /// <summary>.NET arrays in, model, .NET arrays out. Safe to call from several threads.</summary>
        public CallResult Call(Tensor[] ins)
        {
            long t0 = Stopwatch.GetTimestamp(), t1, t2, t3;
            var result = new CallResult();
            try
            {
                using (Py.GIL())
                {
                    var args = new PyObject[ins.Length];
                    try
                    {
                        for (int i = 0; i < ins.Length; i++) args[i] = naive ? ToNumpyNaive(ins[i]) : ToNumpyBulk(ins[i]);
                        t1 = Stopwatch.GetTimestamp();
                        using (PyObject outs = model.Invoke(args))
                        {
                            t2 = Stopwatch.GetTimestamp();
                            int n = (int)outs.Length();
                            var tensors = new Tensor[n];
                            for (int i = 0; i < n; i++)
                                using (PyObject o = outs[i]) tensors[i] = naive ? FromNumpyNaive(o) : FromNumpyBulk(o);
                            result.Outputs = tensors;
                        }
                    }
                    finally
                    {
                        foreach (PyObject a in args) if (a != null) a.Dispose();
                    }
                }
            }
            catch (PythonException e)
            {
                // the .NET side's own frames travel as this exception's StackTrace
                throw new InvalidOperationException("the Python model call raised: " + e.Message +
                    "\n--- Python traceback ---\n" + e.Format(), e);
            }
            catch (Exception e)
            {
                throw new InvalidOperationException("the C# caller failed: " + e.GetType().FullName + ": " + e.Message +
                    "\n--- .NET stack trace where it failed ---\n" + e.StackTrace, e);
            }
            t3 = Stopwatch.GetTimestamp();
            result.MarshalInTicks = t1 - t0;   // GIL acquire + .NET arrays -> NumPy
            result.ComputeTicks = t2 - t1;     // the Python call: torch model on the NumPy inputs
            result.MarshalOutTicks = t3 - t2;  // NumPy -> .NET arrays + GIL release
            result.TotalTicks = t3 - t0;
            return result;
        }

        /// <summary>n calls back to back, timed here by Stopwatch. Returns 4n values in ns:
        /// latency, marshal in, compute, marshal out of each call. pythonnet releases the GIL while
        /// Python calls into .NET, so each call's Py.GIL() acquires it, as a C# application thread does.</summary>
        public long[] TimeCalls(Tensor[] ins, int n)
        {
            var ns = new long[4 * n];
            long freq = Stopwatch.Frequency;
            for (int i = 0; i < n; i++)
            {
                CallResult r = Call(ins);
                ns[4 * i] = r.TotalTicks * 1000000000L / freq;
                ns[4 * i + 1] = r.MarshalInTicks * 1000000000L / freq;
                ns[4 * i + 2] = r.ComputeTicks * 1000000000L / freq;
                ns[4 * i + 3] = r.MarshalOutTicks * 1000000000L / freq;
            }
            return ns;
        }

        /// <summary>Bytes the CLR's garbage collector has allocated and not freed (the managed heap).</summary>
        public static long ManagedHeapBytes() { return GC.GetTotalMemory(false); }

        // ---- the boundary itself, for the overhead benchmark ----

        /// <summary>n empty calls from C# into Python (Py.GIL(), which acquires the GIL, and a call of a
        /// no-op callable), timed here; ns per call.</summary>
        public static double EmptyCallsIntoPython(PyObject noop, int n)
        {
            long t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < n; i++)
            {
                using (Py.GIL())
                using (PyObject r = noop.Invoke()) { }
            }
            return (Stopwatch.GetTimestamp() - t0) * 1e9 / Stopwatch.Frequency / n;
        }

        /// <summary>n copies of `t` each way as Call makes them (.NET array -> new NumPy array, NumPy
        /// array -> new .NET array), bulk or element by element, timed here. Returns 2n values in ns:
        /// to NumPy, from NumPy.</summary>
        public long[] TimeCopies(Tensor t, bool elementwise, int n)
        {
            var ns = new long[2 * n];
            double toNs = 1e9 / Stopwatch.Frequency;
            using (Py.GIL())
            {
                for (int i = 0; i < n; i++)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    using (PyObject arr = elementwise ? ToNumpyNaive(t) : ToNumpyBulk(t))
                    {
                        long t1 = Stopwatch.GetTimestamp();
                        Tensor back = elementwise ? FromNumpyNaive(arr) : FromNumpyBulk(arr);
                        long t2 = Stopwatch.GetTimestamp();
                        if (back.Bytes != t.Bytes) throw new InvalidOperationException("copy lost bytes");
                        ns[2 * i] = (long)((t1 - t0) * toNs);
                        ns[2 * i + 1] = (long)((t2 - t1) * toNs);
                    }
                }
            }
            return ns;
        }

        /// <summary>An empty method for Python to call into .NET.</summary>
        public static void Nothing() { }

        /// <summary>A caller of the closed loop: this runner and one caller's own inputs.</summary>
        public ICaller NewCaller(Tensor[] ins) { return new EmbedCaller(this, ins); }
    }

    sealed class EmbedCaller : ICaller
    {
        readonly Runner runner;
        readonly Tensor[] ins;

        // A C# thread Python has not seen would make Py.GIL() create and destroy a Python thread state
        // on every call (about 7.5 µs). A long-lived application thread keeps one: its first Py.GIL() is
        // never disposed, and BeginAllowThreads gives the GIL back; later calls only take the GIL.
        [ThreadStatic] static bool threadStateKept;

        public EmbedCaller(Runner runner, Tensor[] ins) { this.runner = runner; this.ins = ins; }

        public void CallOnce()
        {
            if (!threadStateKept)
            {
                GC.SuppressFinalize(Py.GIL());  // pythonnet's finalizer would object to a state never released
                PythonEngine.BeginAllowThreads();
                threadStateKept = true;
            }
            runner.Call(ins);
        }
    }
}
