// The C# application of the clr-capi strategy, in the manner of DotNetPy-style embedding layers: it
// calls CPython's C API itself, through P/Invoke, with no pythonnet in the call path.
//
//   - libpython is reached by path: dlopen (RTLD_NOW | RTLD_GLOBAL), one dlsym per function, called
//     through cached Cdecl delegates;
//   - the model lives in the Python heap as a Python callable f(meta_json, *memoryviews) -> tuple;
//   - inputs cross as zero-copy, read-only memoryviews over pinned .NET arrays (buffer protocol);
//   - outputs are read through the buffer protocol and memcpy'd into .NET arrays, reused while their
//     shape and dtype hold;
//   - only small metadata (dtypes and shapes, as JSON text made once per caller) crosses as text;
//   - the GIL is taken per call with PyGILState_Ensure / PyGILState_Release, as any application
//     thread of an embedding program does.
//
// Python is already running (the harness hosts the CLR inside it), so this never calls
// Py_Initialize. Compiled by mcs into the one InteropBench assembly (C# 7: no `using var`, no
// function pointers); the same assembly runs on Mono and on CoreCLR. x86_64 Linux, CPython 3.11
// (the Py_buffer layout and ob_refcnt/ob_type offsets of a release build).

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using System.Text;

namespace InteropBench
{
    /// <summary>The embedding layer's entry point: one Python callable (the model), its callers and
    /// the C API they share.</summary>
    public sealed class CapiRunner
    {
        // ---------------------------------------------------------------------------------------
        // CPython's C API, resolved once per library with dlsym
        // ---------------------------------------------------------------------------------------

        /// <summary>CPython 3.11's Py_buffer (80 bytes on x86_64).</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct PyBuffer
        {
            public IntPtr Buf;
            public IntPtr Obj;
            public long Len;          // Py_ssize_t
            public long ItemSize;     // Py_ssize_t
            public int ReadOnly;
            public int NDim;
            public IntPtr Format;     // char *
            public IntPtr Shape;      // Py_ssize_t *
            public IntPtr Strides;    // Py_ssize_t *
            public IntPtr SubOffsets; // Py_ssize_t *
            public IntPtr Internal;
        }

        internal const int PyBUF_READ = 0x100;
        internal const int PyBUF_FORMAT = 0x0004;
        internal const int PyBUF_ND = 0x0008;
        internal const int PyBUF_C_CONTIGUOUS = 0x0038;  // PyBUF_STRIDES | 0x0020
        internal const ulong Py_TPFLAGS_LIST_SUBCLASS = 1UL << 25;
        internal const ulong Py_TPFLAGS_TUPLE_SUBCLASS = 1UL << 26;

        internal static class Dl
        {
            public const int RTLD_NOW = 0x2;
            public const int RTLD_GLOBAL = 0x100;

            [DllImport("libdl.so.2")] public static extern IntPtr dlopen(string file, int mode);
            [DllImport("libdl.so.2")] public static extern IntPtr dlsym(IntPtr handle, string name);
            [DllImport("libdl.so.2")] public static extern IntPtr dlerror();

            public static string LastError()
            {
                IntPtr e = dlerror();
                return e == IntPtr.Zero ? "(no dlerror)" : Marshal.PtrToStringAnsi(e);
            }
        }

        internal unsafe sealed class Api
        {
            // one delegate type per C signature (o = PyObject*, n = Py_ssize_t, i = int, v = void)
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int Fn_i();
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate void Fn_v();
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate void Fn_v_i(int a);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate void Fn_v_o(IntPtr o);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int Fn_i_o(IntPtr o);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int Fn_i_oo(IntPtr a, IntPtr b);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr Fn_o();
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr Fn_o_o(IntPtr o);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr Fn_o_oo(IntPtr a, IntPtr b);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr Fn_o_ooo(IntPtr a, IntPtr b, IntPtr c);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr Fn_o_n(long n);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate long Fn_n_o(IntPtr o);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr Fn_o_on(IntPtr o, long i);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int Fn_i_ono(IntPtr o, long i, IntPtr v);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr Fn_o_pni(IntPtr mem, long size, int flags);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr Fn_o_pn(byte* s, long size);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr Fn_o_s(byte* s);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr Fn_o_os(IntPtr o, byte* s);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr Fn_p_opn(IntPtr o, long* size);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate void Fn_v_ppp(IntPtr* a, IntPtr* b, IntPtr* c);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate ulong Fn_u_o(IntPtr o);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int Fn_i_obi(IntPtr o, PyBuffer* view, int flags);
            [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate void Fn_v_b(PyBuffer* view);

            public readonly string Path;
            public readonly Fn_i Py_IsInitialized, PyGILState_Ensure;
            public readonly Fn_v_i PyGILState_Release;
            public readonly Fn_o PyEval_SaveThread;
            public readonly Fn_v_o Py_IncRef, Py_DecRef;
            public readonly Fn_i_o PyCallable_Check;
            public readonly Fn_o_ooo PyObject_Call;
            public readonly Fn_o_oo PyObject_CallObject, PyUnicode_Join;
            public readonly Fn_o_o PyObject_CallNoArgs;   // PyObject_CallObject(f, NULL) where absent
            public readonly Fn_o_o PyObject_Str;
            public readonly Fn_o_os PyObject_GetAttrString;
            public readonly Fn_o_s PyImport_ImportModule;
            public readonly Fn_o_n PyTuple_New;
            public readonly Fn_i_ono PyTuple_SetItem;     // steals the item's reference
            public readonly Fn_n_o PyTuple_Size, PyList_Size;
            public readonly Fn_o_on PyTuple_GetItem, PyList_GetItem;  // borrowed references
            public readonly Fn_u_o PyType_GetFlags;
            public readonly Fn_o_pni PyMemoryView_FromMemory;
            public readonly Fn_o_o PyMemoryView_FromObject;
            public readonly Fn_i_obi PyObject_GetBuffer;
            public readonly Fn_v_b PyBuffer_Release;
            public readonly Fn_o_pn PyUnicode_FromStringAndSize;
            public readonly Fn_p_opn PyUnicode_AsUTF8AndSize;
            public readonly Fn_o PyErr_Occurred;
            public readonly Fn_v PyErr_Clear;
            public readonly Fn_v_ppp PyErr_Fetch, PyErr_NormalizeException;
            public readonly Fn_i_oo PyException_SetTraceback;
            public readonly IntPtr None;  // &_Py_NoneStruct

            static readonly Dictionary<string, Api> loaded = new Dictionary<string, Api>();

            /// <summary>The C API of the libpython at `path` ("" or null: the program itself, for a
            /// statically linked Python). dlopen'd once per path and never closed.</summary>
            public static Api Load(string path)
            {
                string key = path ?? "";
                lock (loaded)
                {
                    Api api;
                    if (!loaded.TryGetValue(key, out api))
                    {
                        api = new Api(key);
                        loaded.Add(key, api);
                    }
                    return api;
                }
            }

            readonly IntPtr handle;

            Api(string path)
            {
                Path = path;
                handle = Dl.dlopen(path.Length == 0 ? null : path, Dl.RTLD_NOW | Dl.RTLD_GLOBAL);
                if (handle == IntPtr.Zero)
                    throw new DllNotFoundException("dlopen(\"" + path + "\") failed: " + Dl.LastError());
                Py_IsInitialized = Get<Fn_i>("Py_IsInitialized");
                PyGILState_Ensure = Get<Fn_i>("PyGILState_Ensure");
                PyGILState_Release = Get<Fn_v_i>("PyGILState_Release");
                PyEval_SaveThread = Get<Fn_o>("PyEval_SaveThread");
                Py_IncRef = Get<Fn_v_o>("Py_IncRef");
                Py_DecRef = Get<Fn_v_o>("Py_DecRef");
                PyCallable_Check = Get<Fn_i_o>("PyCallable_Check");
                PyObject_Call = Get<Fn_o_ooo>("PyObject_Call");
                PyObject_CallObject = Get<Fn_o_oo>("PyObject_CallObject");
                PyObject_CallNoArgs = TryGet<Fn_o_o>("PyObject_CallNoArgs");  // 3.9+
                if (PyObject_CallNoArgs == null)
                {
                    Fn_o_oo callObject = PyObject_CallObject;
                    PyObject_CallNoArgs = f => callObject(f, IntPtr.Zero);
                }
                PyObject_Str = Get<Fn_o_o>("PyObject_Str");
                PyObject_GetAttrString = Get<Fn_o_os>("PyObject_GetAttrString");
                PyImport_ImportModule = Get<Fn_o_s>("PyImport_ImportModule");
                PyTuple_New = Get<Fn_o_n>("PyTuple_New");
                PyTuple_SetItem = Get<Fn_i_ono>("PyTuple_SetItem");
                PyTuple_Size = Get<Fn_n_o>("PyTuple_Size");
                PyTuple_GetItem = Get<Fn_o_on>("PyTuple_GetItem");
                PyList_Size = Get<Fn_n_o>("PyList_Size");
                PyList_GetItem = Get<Fn_o_on>("PyList_GetItem");
                PyType_GetFlags = Get<Fn_u_o>("PyType_GetFlags");
                PyMemoryView_FromMemory = Get<Fn_o_pni>("PyMemoryView_FromMemory");
                PyMemoryView_FromObject = Get<Fn_o_o>("PyMemoryView_FromObject");
                PyObject_GetBuffer = Get<Fn_i_obi>("PyObject_GetBuffer");
                PyBuffer_Release = Get<Fn_v_b>("PyBuffer_Release");
                PyUnicode_FromStringAndSize = Get<Fn_o_pn>("PyUnicode_FromStringAndSize");
                PyUnicode_AsUTF8AndSize = Get<Fn_p_opn>("PyUnicode_AsUTF8AndSize");
                PyUnicode_Join = Get<Fn_o_oo>("PyUnicode_Join");
                PyErr_Occurred = Get<Fn_o>("PyErr_Occurred");
                PyErr_Clear = Get<Fn_v>("PyErr_Clear");
                PyErr_Fetch = Get<Fn_v_ppp>("PyErr_Fetch");
                PyErr_NormalizeException = Get<Fn_v_ppp>("PyErr_NormalizeException");
                PyException_SetTraceback = Get<Fn_i_oo>("PyException_SetTraceback");
                None = Sym("_Py_NoneStruct", true);
            }

            IntPtr Sym(string name, bool required)
            {
                Dl.dlerror();
                IntPtr p = Dl.dlsym(handle, name);
                if (p == IntPtr.Zero && required)
                    throw new EntryPointNotFoundException("libpython \"" + Path + "\" has no symbol " + name + ": " + Dl.LastError());
                return p;
            }

            T Get<T>(string name) where T : class
            {
                return (T)(object)Marshal.GetDelegateForFunctionPointer(Sym(name, true), typeof(T));
            }

            T TryGet<T>(string name) where T : class
            {
                IntPtr p = Sym(name, false);
                return p == IntPtr.Zero ? null : (T)(object)Marshal.GetDelegateForFunctionPointer(p, typeof(T));
            }

            volatile bool layoutChecked;

            /// <summary>Once, under the GIL: the object layout Layout reads is this libpython's.</summary>
            public void CheckLayout()
            {
                if (layoutChecked) return;
                IntPtr mem = Marshal.AllocHGlobal(16), mv = IntPtr.Zero, derived = IntPtr.Zero;
                string wrong = null;
                try
                {
                    mv = PyMemoryView_FromMemory(mem, 16, PyBUF_READ);
                    if (mv == IntPtr.Zero) throw Error("PyMemoryView_FromMemory");
                    IntPtr mbuf = Layout.ManagedBuffer(mv);
                    if (Layout.RefCount(mv) != 1) wrong = "ob_refcnt";
                    else if (Layout.Type(mv) != Sym("PyMemoryView_Type", true)) wrong = "ob_type";
                    else if (Layout.Type(mbuf) != Sym("_PyManagedBuffer_Type", true)) wrong = "PyMemoryViewObject.mbuf";
                    else if (Layout.RefCount(mbuf) != 1 || Layout.Exports(mv) != 1 || Layout.BufferReleased(mv))
                        wrong = "_PyManagedBufferObject";
                    else
                    {
                        derived = PyMemoryView_FromObject(mv);  // shares mv's managed buffer
                        if (derived == IntPtr.Zero) throw Error("PyMemoryView_FromObject");
                        if (Layout.Unshared(mv) || Layout.Exports(mv) != 2) wrong = "_PyManagedBufferObject.exports";
                    }
                }
                finally
                {
                    XDecRef(derived);
                    XDecRef(mv);
                    Marshal.FreeHGlobal(mem);
                }
                if (wrong != null)
                    throw new PlatformNotSupportedException("libpython \"" + Path + "\" doesn't lay out " + wrong +
                        " as CPython 3.11's release build does; CapiRunner reads it directly");
                layoutChecked = true;
            }

            // ---- small helpers; all of them need the GIL ----

            public void XDecRef(IntPtr o) { if (o != IntPtr.Zero) Py_DecRef(o); }

            public static byte[] Utf8z(string s)
            {
                var b = new byte[Encoding.UTF8.GetByteCount(s) + 1];
                Encoding.UTF8.GetBytes(s, 0, s.Length, b, 0);
                return b;
            }

            /// <summary>A new str object (NULL with the Python error set if it fails).</summary>
            public IntPtr NewString(string s)
            {
                byte[] b = Utf8z(s);
                fixed (byte* p = b) return PyUnicode_FromStringAndSize(p, b.Length - 1);
            }

            /// <summary>A new reference to o.name, or NULL with the Python error set.</summary>
            public IntPtr GetAttr(IntPtr o, string name)
            {
                byte[] b = Utf8z(name);
                fixed (byte* p = b) return PyObject_GetAttrString(o, p);
            }

            public IntPtr Import(string module)
            {
                byte[] b = Utf8z(module);
                fixed (byte* p = b) return PyImport_ImportModule(p);
            }

            /// <summary>A str object's text (null, Python error cleared, if it isn't one).</summary>
            public string ToManaged(IntPtr str)
            {
                long size;
                IntPtr p = PyUnicode_AsUTF8AndSize(str, &size);
                if (p == IntPtr.Zero) { PyErr_Clear(); return null; }
                return size == 0 ? "" : new string((sbyte*)p, 0, checked((int)size), Encoding.UTF8);
            }

            /// <summary>str(o), never failing.</summary>
            public string Str(IntPtr o)
            {
                if (o == IntPtr.Zero) return "";
                IntPtr s = PyObject_Str(o);
                if (s == IntPtr.Zero) { PyErr_Clear(); return "<str() failed>"; }
                try { return ToManaged(s) ?? "<str() failed>"; }
                finally { Py_DecRef(s); }
            }

            /// <summary>o.name as text, or null (error cleared).</summary>
            public string AttrText(IntPtr o, string name)
            {
                IntPtr a = GetAttr(o, name);
                if (a == IntPtr.Zero) { PyErr_Clear(); return null; }
                try { return ToManaged(a); }
                finally { Py_DecRef(a); }
            }

            /// <summary>A type's name as Python prints it in a traceback: module.QualName, builtins bare.</summary>
            public string TypeName(IntPtr type)
            {
                string name = AttrText(type, "__qualname__") ?? AttrText(type, "__name__") ?? Str(type);
                string module = AttrText(type, "__module__");
                return module == null || module == "builtins" || module == "__main__" ? name : module + "." + name;
            }

            /// <summary>The type name of an object (borrowing its ob_type).</summary>
            public string TypeNameOf(IntPtr o) { return TypeName(Layout.Type(o)); }

            /// <summary>Take the pending Python exception (if any), format it with its traceback, clear
            /// it and drop every reference to it (so the frames it kept, and their locals, go now).</summary>
            public InvalidOperationException Error(string what)
            {
                IntPtr type, value, tb;
                PyErr_Fetch(&type, &value, &tb);
                if (type == IntPtr.Zero)
                    return new InvalidOperationException(what + ": it failed without setting a Python exception");
                try
                {
                    PyErr_NormalizeException(&type, &value, &tb);
                    if (tb != IntPtr.Zero && value != IntPtr.Zero) PyException_SetTraceback(value, tb);
                    string head = TypeName(type) + ": " + Str(value);
                    return new InvalidOperationException(what + " raised: " + head +
                        "\n--- Python traceback ---\n" + FormatException(type, value, tb, head));
                }
                finally
                {
                    XDecRef(type);
                    XDecRef(value);
                    XDecRef(tb);
                    PyErr_Clear();
                }
            }

            /// <summary>"".join(traceback.format_exception(type, value, tb)), or `fallback`.</summary>
            string FormatException(IntPtr type, IntPtr value, IntPtr tb, string fallback)
            {
                IntPtr module = IntPtr.Zero, fn = IntPtr.Zero, args = IntPtr.Zero, lines = IntPtr.Zero,
                    empty = IntPtr.Zero, text = IntPtr.Zero;
                try
                {
                    if ((module = Import("traceback")) == IntPtr.Zero) return Unformatted(fallback);
                    if ((fn = GetAttr(module, "format_exception")) == IntPtr.Zero) return Unformatted(fallback);
                    if ((args = PyTuple_New(3)) == IntPtr.Zero) return Unformatted(fallback);
                    IntPtr[] items = { type, value == IntPtr.Zero ? None : value, tb == IntPtr.Zero ? None : tb };
                    for (int i = 0; i < 3; i++)
                    {
                        Py_IncRef(items[i]);
                        PyTuple_SetItem(args, i, items[i]);
                    }
                    if ((lines = PyObject_Call(fn, args, IntPtr.Zero)) == IntPtr.Zero) return Unformatted(fallback);
                    if ((empty = NewString("")) == IntPtr.Zero) return Unformatted(fallback);
                    if ((text = PyUnicode_Join(empty, lines)) == IntPtr.Zero) return Unformatted(fallback);
                    return (ToManaged(text) ?? fallback).TrimEnd('\n');
                }
                finally
                {
                    XDecRef(text);
                    XDecRef(empty);
                    XDecRef(lines);
                    XDecRef(args);
                    XDecRef(fn);
                    XDecRef(module);
                }
            }

            string Unformatted(string fallback)
            {
                PyErr_Clear();
                return "(traceback.format_exception failed)\n" + fallback;
            }
        }

        /// <summary>What this file reads of CPython's objects directly, for lack of API functions
        /// (CPython 3.11 release build, x86_64; checked once per library by Api.CheckLayout).</summary>
        internal static class Layout
        {
            const int ObType = 8;               // PyObject: ob_refcnt at 0, ob_type at 8
            const int MemoryViewMbuf = 24;      // PyMemoryViewObject: PyObject_VAR_HEAD, then mbuf
            const int MbufFlags = 16;           // _PyManagedBufferObject: PyObject_HEAD, int flags,
            const int MbufExports = 24;         //   Py_ssize_t exports, Py_buffer master
            const int MbufReleased = 0x001;     // _Py_MANAGED_BUFFER_RELEASED

            public static long RefCount(IntPtr o) { return Marshal.ReadInt64(o); }
            public static IntPtr Type(IntPtr o) { return Marshal.ReadIntPtr(o, ObType); }
            public static IntPtr ManagedBuffer(IntPtr mv) { return Marshal.ReadIntPtr(mv, MemoryViewMbuf); }
            public static long Exports(IntPtr mv) { return Marshal.ReadInt64(ManagedBuffer(mv), MbufExports); }

            /// <summary>Nothing but our reference holds the memoryview, and nothing but it the managed
            /// buffer over our memory (each memoryview derived from it holds the buffer too).</summary>
            public static bool Unshared(IntPtr mv) { return RefCount(mv) == 1 && RefCount(ManagedBuffer(mv)) == 1; }

            /// <summary>The managed buffer is released: no memoryview anywhere can read our memory.</summary>
            public static bool BufferReleased(IntPtr mv) { return (Marshal.ReadInt32(ManagedBuffer(mv), MbufFlags) & MbufReleased) != 0; }
        }

        // ---------------------------------------------------------------------------------------
        // dtypes: NumPy's names, buffer-protocol format characters, .NET arrays
        // ---------------------------------------------------------------------------------------

        internal static class DTypes
        {
            static readonly string[] signedInts = { null, "int8", "int16", null, "int32", null, null, null, "int64" };
            static readonly string[] unsignedInts = { null, "uint8", "uint16", null, "uint32", null, null, null, "uint64" };

            /// <summary>NumPy's name for a buffer's struct-module format and item size (null: not one of
            /// ours). Integer widths come from the item size, since '<l' is 4 bytes and native 'l' 8.</summary>
            public static unsafe string FromFormat(IntPtr format, long itemSize)
            {
                byte* f = (byte*)format;
                if (f == null) return itemSize == 1 ? "uint8" : null;  // NULL format means unsigned bytes
                int k = 0;
                if (f[0] == (byte)'<' || f[0] == (byte)'=' || f[0] == (byte)'@') k = 1;
                if (f[k] == 0 || f[k + 1] != 0) return null;
                string name;
                switch ((char)f[k])
                {
                    case 'f': name = "float32"; break;
                    case 'd': name = "float64"; break;
                    case 'e': name = "float16"; break;
                    case '?': name = "bool"; break;
                    case 'b': case 'h': case 'i': case 'l': case 'q': case 'n':
                        return itemSize > 0 && itemSize <= 8 ? signedInts[itemSize] : null;
                    case 'B': case 'H': case 'I': case 'L': case 'Q': case 'N':
                        return itemSize > 0 && itemSize <= 8 ? unsignedInts[itemSize] : null;
                    default: return null;
                }
                return Dtypes.ItemSize(name) == itemSize ? name : null;
            }

            public static string FormatText(IntPtr format)
            {
                return format == IntPtr.Zero ? "(NULL)" : Marshal.PtrToStringAnsi(format);
            }
        }

        internal static long Count(long[] shape)
        {
            long n = 1;
            foreach (long d in shape) n *= d;
            return n;
        }

        internal static unsafe void Copy(IntPtr src, IntPtr dst, long bytes)
        {
            if (bytes > 0) Buffer.MemoryCopy((void*)src, (void*)dst, bytes, bytes);
        }

        /// <summary>Stopwatch ticks to ns, without overflow for long spans.</summary>
        internal static long Ns(long ticks)
        {
            long freq = Stopwatch.Frequency;
            return freq == 1000000000L ? ticks : (long)(ticks * (1e9 / freq));
        }

        // ---------------------------------------------------------------------------------------
        // the runner
        // ---------------------------------------------------------------------------------------

        internal readonly Api C;
        internal readonly IntPtr Callable;  // one reference of our own while not disposed

        /// <summary>Keep one Python thread state per C# thread (made by its first call's PyGILState_Ensure,
        /// its GIL then released with PyEval_SaveThread): each call's PyGILState_Ensure/Release then only
        /// takes and gives back the GIL. Without it, a thread Python has not seen creates and destroys a
        /// thread state on every call (about 7.5 µs here), which a long-lived application thread need not pay.</summary>
        public bool KeepThreadState = true;

        [ThreadStatic] static bool threadStateKept;

        internal void EnterThread()
        {
            if (!KeepThreadState || threadStateKept) return;
            C.PyGILState_Ensure();  // never released: the thread state lives as long as the thread
            C.PyEval_SaveThread();
            threadStateKept = true;
        }
        readonly List<CapiCaller> callers = new List<CapiCaller>();
        volatile bool disposed;

        /// <summary>libraryPath: the libpython this process runs (already loaded; dlopen just finds it).
        /// callable: id() of a Python callable f(meta_json, *memoryviews) -> tuple of C-contiguous
        /// buffer exporters, which Python keeps alive; the runner holds its own reference until Dispose.</summary>
        public unsafe CapiRunner(string libraryPath, long callable)
        {
            if (IntPtr.Size != 8)
                throw new PlatformNotSupportedException("CapiRunner is written for 64-bit CPython (Py_ssize_t = 8 bytes)");
            if (sizeof(PyBuffer) != 80)
                throw new PlatformNotSupportedException("Py_buffer must be 80 bytes on x86_64; this build lays it out in " + sizeof(PyBuffer));
            if (callable == 0) throw new ArgumentException("callable is NULL (pass id() of a live Python callable)", "callable");
            C = Api.Load(libraryPath);
            if (C.Py_IsInitialized() == 0)
                throw new InvalidOperationException("Python is not initialized in this process (Py_IsInitialized() == 0): " +
                    "CapiRunner embeds into a running interpreter and never calls Py_Initialize itself");
            Callable = new IntPtr(callable);
            int gil = C.PyGILState_Ensure();
            try
            {
                C.CheckLayout();
                if (C.PyCallable_Check(Callable) == 0)
                    throw new ArgumentException("the object at " + callable + " is a " + C.TypeNameOf(Callable) + ", not a callable", "callable");
                C.Py_IncRef(Callable);
            }
            finally { C.PyGILState_Release(gil); }
        }

        internal void CheckAlive()
        {
            if (disposed) throw new ObjectDisposedException("CapiRunner", "the runner was disposed: its Python references are gone");
        }

        /// <summary>Untimed set-up: a caller's own inputs, copied once from native memory at `addresses`
        /// into new .NET arrays, and its JSON metadata ([{"dtype":..,"shape":[..]}, ...]) made once.</summary>
        public unsafe CapiCaller NewCaller(string[] dtypes, long[][] shapes, long[] addresses)
        {
            CheckAlive();
            if (dtypes == null || shapes == null || addresses == null) throw new ArgumentNullException("dtypes, shapes and addresses are required");
            if (shapes.Length != dtypes.Length || addresses.Length != dtypes.Length)
                throw new ArgumentException("dtypes, shapes and addresses differ in length: " + dtypes.Length + ", " + shapes.Length + ", " + addresses.Length);
            int n = dtypes.Length;
            var data = new Array[n];
            var bytes = new long[n];
            var meta = new StringBuilder("[");
            for (int i = 0; i < n; i++)
            {
                long[] shape = (long[])shapes[i].Clone();
                foreach (long d in shape)
                    if (d < 0) throw new ArgumentException("input " + i + " has a negative dimension");
                long count = Count(shape);
                data[i] = Dtypes.NewArray(dtypes[i], count);
                bytes[i] = count * Dtypes.ItemSize(dtypes[i]);
                if (bytes[i] > 0)
                {
                    if (addresses[i] == 0) throw new ArgumentException("input " + i + " has a NULL address");
                    GCHandle h = GCHandle.Alloc(data[i], GCHandleType.Pinned);
                    try { Copy(new IntPtr(addresses[i]), h.AddrOfPinnedObject(), bytes[i]); }
                    finally { h.Free(); }
                }
                if (i > 0) meta.Append(',');
                meta.Append("{\"dtype\":\"").Append(dtypes[i]).Append("\",\"shape\":[");
                for (int k = 0; k < shape.Length; k++)
                {
                    if (k > 0) meta.Append(',');
                    meta.Append(shape[k].ToString(CultureInfo.InvariantCulture));
                }
                meta.Append("]}");
            }
            meta.Append(']');
            IntPtr metaStr;
            int gil = C.PyGILState_Ensure();
            try
            {
                metaStr = C.NewString(meta.ToString());
                if (metaStr == IntPtr.Zero) throw C.Error("making the metadata string");
            }
            finally { C.PyGILState_Release(gil); }
            var caller = new CapiCaller(this, data, bytes, metaStr);
            lock (callers) callers.Add(caller);
            return caller;
        }

        /// <summary>n empty round trips C# -> CPython's C API -> C#, each PyGILState_Ensure,
        /// PyObject_CallNoArgs(noop), Py_DecRef of its result, PyGILState_Release; ns per call.</summary>
        public double EmptyCalls(long noop, int n)
        {
            CheckAlive();
            if (noop == 0) throw new ArgumentException("noop is NULL", "noop");
            if (n <= 0) throw new ArgumentOutOfRangeException("n", "n must be positive");
            IntPtr f = new IntPtr(noop);
            int gil = C.PyGILState_Ensure();
            try
            {
                if (C.PyCallable_Check(f) == 0) throw new ArgumentException("noop is a " + C.TypeNameOf(f) + ", not a callable", "noop");
                C.Py_IncRef(f);
            }
            finally { C.PyGILState_Release(gil); }
            Api.Fn_i ensure = C.PyGILState_Ensure;
            Api.Fn_v_i release = C.PyGILState_Release;
            Api.Fn_o_o call = C.PyObject_CallNoArgs;
            Api.Fn_v_o decref = C.Py_DecRef;
            try
            {
                long t0 = Stopwatch.GetTimestamp();
                for (int i = 0; i < n; i++)
                {
                    int s = ensure();
                    IntPtr r = call(f);
                    if (r == IntPtr.Zero)
                    {
                        InvalidOperationException e;
                        try { e = C.Error("the no-op call"); }
                        finally { release(s); }
                        throw e;
                    }
                    decref(r);
                    release(s);
                }
                long t1 = Stopwatch.GetTimestamp();
                return Ns(t1 - t0) / (double)n;
            }
            finally
            {
                gil = C.PyGILState_Ensure();
                C.Py_DecRef(f);
                C.PyGILState_Release(gil);
            }
        }

        /// <summary>Drop the runner's references: the callable's and every caller's metadata string.
        /// Its callers can't call after this.</summary>
        public void Dispose()
        {
            if (disposed) return;
            disposed = true;
            int gil = C.PyGILState_Ensure();
            try
            {
                C.Py_DecRef(Callable);
                lock (callers)
                {
                    foreach (CapiCaller c in callers) c.DropMeta();
                    callers.Clear();
                }
            }
            finally { C.PyGILState_Release(gil); }
        }
    }

    /// <summary>One caller: its own inputs (.NET arrays), its metadata string, its outputs (.NET arrays
    /// reused from call to call). One thread at a time; several callers may call at once.</summary>
    public sealed class CapiCaller : ICaller
    {
        const int OutFlags = CapiRunner.PyBUF_ND | CapiRunner.PyBUF_FORMAT | CapiRunner.PyBUF_C_CONTIGUOUS;

        readonly CapiRunner runner;
        readonly CapiRunner.Api C;
        readonly Array[] inputs;
        readonly long[] inputBytes;
        IntPtr meta;                     // a str object of our own (until the runner's Dispose)
        readonly GCHandle[] pins;        // per call
        readonly IntPtr[] views;         // per call: our own reference to each input's memoryview
        readonly List<GCHandle> keptPinned = new List<GCHandle>();  // inputs Python wouldn't let go of

        Array[] outData = new Array[0];
        string[] outDType = new string[0];
        long[][] outShape = new long[0][];
        long[] outBytes = new long[0];
        int outCount;

        internal CapiCaller(CapiRunner runner, Array[] inputs, long[] inputBytes, IntPtr meta)
        {
            this.runner = runner;
            C = runner.C;
            this.inputs = inputs;
            this.inputBytes = inputBytes;
            this.meta = meta;
            pins = new GCHandle[inputs.Length];
            views = new IntPtr[inputs.Length];
        }

        internal void DropMeta()  // under the GIL, from the runner's Dispose
        {
            C.XDecRef(meta);
            meta = IntPtr.Zero;
        }

        public void CallOnce()
        {
            long t1, t2, t3;
            Call(out t1, out t2, out t3);
        }

        /// <summary>n calls back to back, timed here by Stopwatch: 4n values in ns, for each call its
        /// total, marshal in, compute and marshal out (the three add up to the total).</summary>
        public long[] TimeCalls(int n)
        {
            if (n < 0) throw new ArgumentOutOfRangeException("n");
            var ns = new long[4 * n];
            for (int i = 0; i < n; i++)
            {
                long t0 = Stopwatch.GetTimestamp(), t1, t2, t3;
                Call(out t1, out t2, out t3);
                long a = CapiRunner.Ns(t1 - t0), b = CapiRunner.Ns(t2 - t0), c = CapiRunner.Ns(t3 - t0);
                ns[4 * i] = c;
                ns[4 * i + 1] = a;
                ns[4 * i + 2] = b - a;
                ns[4 * i + 3] = c - b;
            }
            return ns;
        }

        public int OutputCount { get { return outCount; } }

        public string OutputDType(int i) { CheckOutput(i); return outDType[i]; }

        public long[] OutputShape(int i) { CheckOutput(i); return (long[])outShape[i].Clone(); }

        /// <summary>memcpy the last call's output i to native memory at `address`.</summary>
        public void CopyOutput(int i, long address)
        {
            CheckOutput(i);
            if (outBytes[i] == 0) return;
            if (address == 0) throw new ArgumentException("address is NULL", "address");
            GCHandle h = GCHandle.Alloc(outData[i], GCHandleType.Pinned);
            try { CapiRunner.Copy(h.AddrOfPinnedObject(), new IntPtr(address), outBytes[i]); }
            finally { h.Free(); }
        }

        void CheckOutput(int i)
        {
            if (i < 0 || i >= outCount)
                throw new ArgumentOutOfRangeException("i", "output " + i + " of " + outCount + (outCount == 0 ? " (no call has completed yet)" : ""));
        }

        // ---- one call ----

        /// <summary>One call; t1, t2, t3: Stopwatch timestamps after marshal in, after the Python call,
        /// after marshal out (GIL released, inputs unpinned).</summary>
        void Call(out long t1, out long t2, out long t3)
        {
            runner.CheckAlive();
            Exception failure = null;
            IntPtr args = IntPtr.Zero, result = IntPtr.Zero;
            int pinned = 0;
            t1 = t2 = 0;
            runner.EnterThread();
            int gil = C.PyGILState_Ensure();
            try
            {
                try
                {
                    // marshal in: pin, wrap each input in a read-only memoryview, the args tuple
                    for (; pinned < inputs.Length; pinned++)
                        pins[pinned] = GCHandle.Alloc(inputs[pinned], GCHandleType.Pinned);
                    args = C.PyTuple_New(inputs.Length + 1);
                    if (args == IntPtr.Zero) throw C.Error("building the arguments");
                    C.Py_IncRef(meta);
                    C.PyTuple_SetItem(args, 0, meta);
                    for (int i = 0; i < inputs.Length; i++)
                    {
                        IntPtr mv = C.PyMemoryView_FromMemory(pins[i].AddrOfPinnedObject(), inputBytes[i], CapiRunner.PyBUF_READ);
                        if (mv == IntPtr.Zero) throw C.Error("wrapping input " + i + " in a memoryview");
                        views[i] = mv;
                        C.Py_IncRef(mv);                    // ours, to see after the call who else holds it
                        C.PyTuple_SetItem(args, i + 1, mv);  // the tuple's (stolen)
                    }
                    t1 = Stopwatch.GetTimestamp();

                    // compute
                    result = C.PyObject_Call(runner.Callable, args, IntPtr.Zero);
                    t2 = Stopwatch.GetTimestamp();
                    if (result == IntPtr.Zero) throw C.Error("the Python model call");

                    // marshal out
                    ReadOutputs(result);
                }
                catch (Exception e)
                {
                    failure = e;
                    if (t1 == 0) t1 = Stopwatch.GetTimestamp();
                    if (t2 == 0) t2 = t1;
                }
                string kept = Cleanup(ref args, ref result, pinned);
                if (kept != null)
                    failure = failure == null ? new InvalidOperationException(kept)
                        : new InvalidOperationException(failure.Message + "\n--- and ---\n" + kept, failure);
            }
            finally { C.PyGILState_Release(gil); }
            t3 = Stopwatch.GetTimestamp();
            if (failure != null) ExceptionDispatchInfo.Capture(failure).Throw();
        }

        void ReadOutputs(IntPtr result)
        {
            ulong flags = C.PyType_GetFlags(CapiRunner.Layout.Type(result));
            bool tuple = (flags & CapiRunner.Py_TPFLAGS_TUPLE_SUBCLASS) != 0;
            if (!tuple && (flags & CapiRunner.Py_TPFLAGS_LIST_SUBCLASS) == 0)
                throw new InvalidOperationException("the Python model call returned a " + C.TypeNameOf(result) +
                    "; it must return a tuple of C-contiguous arrays");
            long n = tuple ? C.PyTuple_Size(result) : C.PyList_Size(result);
            if (n != outData.Length) Resize((int)n);
            outCount = 0;
            for (int i = 0; i < n; i++)
            {
                IntPtr item = tuple ? C.PyTuple_GetItem(result, i) : C.PyList_GetItem(result, i);  // borrowed
                if (item == IntPtr.Zero) throw C.Error("reading output " + i);
                C.Py_IncRef(item);
                try { ReadOutput(i, item); }
                finally { C.Py_DecRef(item); }
            }
            outCount = (int)n;
        }

        void Resize(int n)
        {
            Array.Resize(ref outData, n);
            Array.Resize(ref outDType, n);
            Array.Resize(ref outShape, n);
            Array.Resize(ref outBytes, n);
        }

        unsafe void ReadOutput(int i, IntPtr item)
        {
            CapiRunner.PyBuffer view = default(CapiRunner.PyBuffer);
            if (C.PyObject_GetBuffer(item, &view, OutFlags) != 0)
                throw C.Error("reading output " + i + " (a " + C.TypeNameOf(item) + ") through the buffer protocol");
            try
            {
                string dtype = CapiRunner.DTypes.FromFormat(view.Format, view.ItemSize);
                if (dtype == null)
                    throw new NotSupportedException("output " + i + " has buffer format '" + CapiRunner.DTypes.FormatText(view.Format) +
                        "' with " + view.ItemSize + "-byte items, which has no .NET array type here");
                int ndim = view.NDim;
                long* dims = (long*)view.Shape;
                if (ndim > 0 && dims == null)
                    throw new InvalidOperationException("output " + i + " exported no shape");
                long[] shape = outShape[i];
                bool same = outData[i] != null && outDType[i] == dtype && shape.Length == ndim;
                for (int k = 0; same && k < ndim; k++) same = shape[k] == dims[k];
                if (!same)
                {
                    shape = new long[ndim];
                    for (int k = 0; k < ndim; k++) shape[k] = dims[k];
                    outData[i] = Dtypes.NewArray(dtype, CapiRunner.Count(shape));
                    outShape[i] = shape;
                    outDType[i] = dtype;
                    outBytes[i] = CapiRunner.Count(shape) * view.ItemSize;
                }
                if (view.Len != outBytes[i])
                    throw new InvalidOperationException("output " + i + " exports " + view.Len + " bytes for shape [" +
                        string.Join(",", shape) + "] of " + dtype);
                if (view.Len > 0)
                {
                    GCHandle h = GCHandle.Alloc(outData[i], GCHandleType.Pinned);
                    try { CapiRunner.Copy(view.Buf, h.AddrOfPinnedObject(), view.Len); }
                    finally { h.Free(); }
                }
            }
            finally { C.PyBuffer_Release(&view); }
        }

        /// <summary>After the call, under the GIL: drop the result and the args tuple, then each input's
        /// memoryview and pin. An input is unpinned only once nothing in Python can reach its memory: our
        /// memoryview is the only reference to itself and to its managed buffer (the fast path), or else,
        /// after release() of our memoryview (and a gc.collect() if needed), the managed buffer, which
        /// every memoryview derived from ours shares (np.frombuffer makes one), is released. Otherwise
        /// the array stays pinned for good, so Python never reads moved or freed memory, and the call
        /// fails saying so.</summary>
        string Cleanup(ref IntPtr args, ref IntPtr result, int pinned)
        {
            C.XDecRef(result);
            result = IntPtr.Zero;
            C.XDecRef(args);
            args = IntPtr.Zero;
            string kept = null;
            for (int i = 0; i < views.Length; i++)
            {
                IntPtr mv = views[i];
                if (mv == IntPtr.Zero) continue;
                views[i] = IntPtr.Zero;
                bool safe = CapiRunner.Layout.Unshared(mv) || Release(mv);
                C.Py_DecRef(mv);
                if (!safe)
                {
                    keptPinned.Add(pins[i]);
                    pins[i] = default(GCHandle);
                    kept = (kept == null ? "" : kept + "\n") + "the Python callable kept a view of input " + i +
                        " past the call (a memoryview of it, or an array over one, is still alive); that .NET array " +
                        "stays pinned for good (" + keptPinned.Count + " so far). The callable must copy or finish " +
                        "with its inputs before it returns";
                }
            }
            for (int i = 0; i < pinned; i++)
                if (pins[i].IsAllocated) pins[i].Free();
            return kept;
        }

        bool Release(IntPtr mv)
        {
            CallRelease(mv);
            if (CapiRunner.Layout.BufferReleased(mv)) return true;
            IntPtr gc = C.Import("gc");  // a reference cycle may hold a derived view: collect, and try again
            if (gc == IntPtr.Zero) { C.PyErr_Clear(); return false; }
            IntPtr collect = C.GetAttr(gc, "collect");
            C.Py_DecRef(gc);
            if (collect == IntPtr.Zero) { C.PyErr_Clear(); return false; }
            IntPtr r = C.PyObject_CallNoArgs(collect);
            C.Py_DecRef(collect);
            if (r == IntPtr.Zero) C.PyErr_Clear(); else C.Py_DecRef(r);
            CallRelease(mv);
            return CapiRunner.Layout.BufferReleased(mv);
        }

        void CallRelease(IntPtr mv)  // mv.release(); a BufferError (mv itself still exported) is ignored
        {
            IntPtr release = C.GetAttr(mv, "release");
            if (release == IntPtr.Zero) { C.PyErr_Clear(); return; }
            IntPtr r = C.PyObject_CallNoArgs(release);
            C.Py_DecRef(release);
            if (r == IntPtr.Zero) C.PyErr_Clear(); else C.Py_DecRef(r);
        }
    }
}
