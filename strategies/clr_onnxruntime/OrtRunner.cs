// The C# application of the clr-onnxruntime strategy: it calls ONNX Runtime's C API directly through
// a small hand-written binding (no Microsoft.ML.OnnxRuntime package). The library is loaded by path
// with dlopen, OrtGetApiBase()->GetApi(version) gives the OrtApi table of function pointers, and each
// function used here is turned into a Cdecl delegate once (Marshal.GetDelegateForFunctionPointer).
//
// In:   each caller holds its inputs in .NET arrays; a call pins them (GCHandle) and wraps them with
//       CreateTensorWithDataAsOrtValue over the .NET memory (no copy).
// Out:  ORT allocates the outputs and the caller copies them into .NET arrays (reused while the shape
//       and type stay the same), or, with reuseOutputs, once the shapes are known, ORT writes straight
//       into pinned .NET arrays bound as preallocated output OrtValues.
// Time: TimeCalls runs n calls inside the CLR, timed by Stopwatch: total, wrap_in, run, copy_out.
//
// Compiled by mcs (C# 7) into the one InteropBench assembly with the other clr-* sources; the same
// assembly runs on Mono and on CoreCLR. Only blittable signatures cross into native code.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Runtime.InteropServices;
using System.Text;

namespace InteropBench
{
    /// <summary>dlopen/dlsym, from libdl.so.2 (or libc.so.6 where glibc merged them).</summary>
    static class OrtDl
    {
        const int RTLD_NOW = 2;

        [DllImport("libdl.so.2", EntryPoint = "dlopen")] static extern IntPtr DlOpenDl(byte[] path, int flags);
        [DllImport("libdl.so.2", EntryPoint = "dlsym")] static extern IntPtr DlSymDl(IntPtr handle, byte[] name);
        [DllImport("libdl.so.2", EntryPoint = "dlerror")] static extern IntPtr DlErrorDl();
        [DllImport("libc.so.6", EntryPoint = "dlopen")] static extern IntPtr DlOpenC(byte[] path, int flags);
        [DllImport("libc.so.6", EntryPoint = "dlsym")] static extern IntPtr DlSymC(IntPtr handle, byte[] name);
        [DllImport("libc.so.6", EntryPoint = "dlerror")] static extern IntPtr DlErrorC();

        static bool useLibc;

        static IntPtr Open(byte[] path)
        {
            if (!useLibc)
            {
                try { return DlOpenDl(path, RTLD_NOW); }
                catch (DllNotFoundException) { useLibc = true; }
                catch (EntryPointNotFoundException) { useLibc = true; }
            }
            return DlOpenC(path, RTLD_NOW);
        }

        static IntPtr Error() { return useLibc ? DlErrorC() : DlErrorDl(); }

        /// <summary>dlopen(path) and dlsym(symbol); throws DllNotFoundException / EntryPointNotFoundException
        /// with dlerror()'s message. The library stays loaded for the life of the process.</summary>
        public static IntPtr Symbol(string libraryPath, string symbol)
        {
            if (string.IsNullOrEmpty(libraryPath))
                throw new ArgumentException("the ONNX Runtime library path is empty");
            if (!File.Exists(libraryPath))
                throw new DllNotFoundException("cannot load the ONNX Runtime library '" + libraryPath + "': no such file");
            IntPtr handle = Open(OrtUtf8.Bytes(libraryPath));
            if (handle == IntPtr.Zero)
                throw new DllNotFoundException("cannot load the ONNX Runtime library '" + libraryPath + "': dlopen failed: " +
                                               (OrtUtf8.Read(Error()) ?? "(no dlerror message)"));
            Error();  // clear any earlier error before dlsym
            IntPtr sym = useLibc ? DlSymC(handle, OrtUtf8.Bytes(symbol)) : DlSymDl(handle, OrtUtf8.Bytes(symbol));
            if (sym == IntPtr.Zero)
                throw new EntryPointNotFoundException("'" + libraryPath + "' does not export " + symbol + " (is it ONNX Runtime?): " +
                                                      (OrtUtf8.Read(Error()) ?? "(no dlerror message)"));
            return sym;
        }
    }

    static class OrtUtf8
    {
        public static byte[] Bytes(string s)
        {
            int n = Encoding.UTF8.GetByteCount(s);
            var b = new byte[n + 1];  // NUL-terminated
            Encoding.UTF8.GetBytes(s, 0, s.Length, b, 0);
            return b;
        }

        /// <summary>A NUL-terminated UTF-8 string in native memory (Marshal.PtrToStringUTF8 is not on Mono's 4.x profile).</summary>
        public static unsafe string Read(IntPtr p)
        {
            if (p == IntPtr.Zero) return null;
            byte* b = (byte*)p;
            int n = 0;
            while (b[n] != 0) n++;
            return Encoding.UTF8.GetString(b, n);
        }

        /// <summary>Copy to a new NUL-terminated native string (free with Marshal.FreeHGlobal).</summary>
        public static IntPtr Alloc(string s)
        {
            byte[] b = Bytes(s);
            IntPtr p = Marshal.AllocHGlobal(b.Length);
            Marshal.Copy(b, 0, p, b.Length);
            return p;
        }
    }

    /// <summary>ONNX tensor element types (ONNXTensorElementDataType) and their NumPy / .NET counterparts.</summary>
    static class OrtTypes
    {
        public const int Float = 1, UInt8 = 2, Int8 = 3, UInt16 = 4, Int16 = 5, Int32 = 6, Int64 = 7, Bool = 9, Float16 = 10, Double = 11;

        public static int FromNumpy(string dtype)
        {
            switch (dtype)
            {
                case "float32": return Float;
                case "float64": return Double;
                case "float16": return Float16;
                case "int64": return Int64;
                case "int32": return Int32;
                case "int16": return Int16;
                case "int8": return Int8;
                case "uint8": return UInt8;
                case "uint16": return UInt16;
                case "bool": return Bool;
                default: throw new NotSupportedException("NumPy dtype '" + dtype + "' has no ONNX Runtime tensor type here");
            }
        }

        /// <summary>NumPy's name of an ONNX element type, or null when it has no .NET array here.</summary>
        public static string Numpy(int type)
        {
            switch (type)
            {
                case Float: return "float32";
                case Double: return "float64";
                case Float16: return "float16";
                case Int64: return "int64";
                case Int32: return "int32";
                case Int16: return "int16";
                case Int8: return "int8";
                case UInt8: return "uint8";
                case UInt16: return "uint16";
                case Bool: return "bool";
                default: return null;
            }
        }

        static string Known(int type)
        {
            string name = Numpy(type);
            if (name == null) throw new NotSupportedException("ONNX element type " + type + " has no .NET array here");
            return name;
        }

        public static int ItemSize(int type) { return Dtypes.ItemSize(Known(type)); }

        public static Array NewArray(int type, long count) { return Dtypes.NewArray(Known(type), count); }

        public static long Count(long[] shape)
        {
            long n = 1;
            foreach (long d in shape)
            {
                if (d < 0) throw new ArgumentException("negative dimension in shape [" + string.Join(", ", shape) + "]");
                n *= d;
            }
            return n;
        }
    }

    /// <summary>The part of the OrtApi table this application uses: one Cdecl delegate per function,
    /// created once. Slot numbers are offsets in `struct OrtApi` of onnxruntime_c_api.h (the table is
    /// only ever appended to, so they hold for every API version at or above the one a function came in).</summary>
    sealed class OrtApiBinding
    {
        // --- the C signatures (OrtStatus* is IntPtr; size_t is UIntPtr; C enums are int) ---
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr GetApiBaseFn();
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr GetApiFn(uint version);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr GetVersionStringFn();
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int GetErrorCodeFn(IntPtr status);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr GetErrorMessageFn(IntPtr status);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate void ReleaseFn(IntPtr obj);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr CreateEnvFn(int logLevel, IntPtr logId, out IntPtr env);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr CreateSessionFn(IntPtr env, IntPtr modelPath, IntPtr options, out IntPtr session);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate IntPtr RunFn(IntPtr session, IntPtr runOptions, IntPtr inputNames, IntPtr inputs, UIntPtr inputCount,
                                     IntPtr outputNames, UIntPtr outputCount, IntPtr outputs);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr CreateSessionOptionsFn(out IntPtr options);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr SetIntFn(IntPtr options, int value);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr CountFn(IntPtr session, out UIntPtr count);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr GetNameFn(IntPtr session, UIntPtr index, IntPtr allocator, out IntPtr name);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate IntPtr CreateTensorWithDataFn(IntPtr memoryInfo, IntPtr data, UIntPtr dataBytes, IntPtr shape, UIntPtr shapeLength,
                                                      int elementType, out IntPtr value);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr GetTensorMutableDataFn(IntPtr value, out IntPtr data);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr GetTensorTypeAndShapeFn(IntPtr value, out IntPtr info);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr GetTensorElementTypeFn(IntPtr info, out int type);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr GetDimensionsCountFn(IntPtr info, out UIntPtr count);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr GetDimensionsFn(IntPtr info, IntPtr dims, UIntPtr length);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr CreateCpuMemoryInfoFn(int allocatorType, int memType, out IntPtr info);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr AllocatorFreeFn(IntPtr allocator, IntPtr p);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr GetAllocatorFn(out IntPtr allocator);
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr AddConfigEntryFn(IntPtr options, IntPtr key, IntPtr value);

        /// <summary>The ORT_API_VERSION asked for: that of the onnxruntime_c_api.h the slots below were counted from.</summary>
        public const uint ApiVersion = 29;

        public readonly string VersionString;
        public readonly GetErrorCodeFn GetErrorCode;
        public readonly GetErrorMessageFn GetErrorMessage;
        public readonly CreateEnvFn CreateEnv;
        public readonly CreateSessionFn CreateSession;
        public readonly RunFn Run;
        public readonly CreateSessionOptionsFn CreateSessionOptions;
        public readonly SetIntFn SetSessionGraphOptimizationLevel, SetIntraOpNumThreads, SetInterOpNumThreads;
        public readonly CountFn SessionGetInputCount, SessionGetOutputCount;
        public readonly GetNameFn SessionGetInputName, SessionGetOutputName;
        public readonly CreateTensorWithDataFn CreateTensorWithDataAsOrtValue;
        public readonly GetTensorMutableDataFn GetTensorMutableData;
        public readonly GetTensorElementTypeFn GetTensorElementType;
        public readonly GetDimensionsCountFn GetDimensionsCount;
        public readonly GetDimensionsFn GetDimensions;
        public readonly GetTensorTypeAndShapeFn GetTensorTypeAndShape;
        public readonly CreateCpuMemoryInfoFn CreateCpuMemoryInfo;
        public readonly AllocatorFreeFn AllocatorFree;
        public readonly GetAllocatorFn GetAllocatorWithDefaultOptions;
        public readonly ReleaseFn ReleaseEnv, ReleaseStatus, ReleaseMemoryInfo, ReleaseSession, ReleaseValue,
                                  ReleaseTensorTypeAndShapeInfo, ReleaseSessionOptions;
        public readonly AddConfigEntryFn AddSessionConfigEntry;

        readonly IntPtr api;

        public OrtApiBinding(string libraryPath)
        {
            IntPtr getApiBase = OrtDl.Symbol(libraryPath, "OrtGetApiBase");
            IntPtr apiBase = Fn<GetApiBaseFn>(getApiBase)();
            if (apiBase == IntPtr.Zero) throw new InvalidOperationException("OrtGetApiBase() of '" + libraryPath + "' returned NULL");
            // struct OrtApiBase { const OrtApi*(*GetApi)(uint32_t version); const char*(*GetVersionString)(void); }
            var getApi = Fn<GetApiFn>(Marshal.ReadIntPtr(apiBase, 0));
            var getVersion = Fn<GetVersionStringFn>(Marshal.ReadIntPtr(apiBase, IntPtr.Size));
            VersionString = OrtUtf8.Read(getVersion()) ?? "unknown";
            api = getApi(ApiVersion);
            if (api == IntPtr.Zero)
                throw new NotSupportedException("the ONNX Runtime library '" + libraryPath + "' (version " + VersionString +
                                                ") does not serve ORT_API_VERSION " + ApiVersion + " (it needs ONNX Runtime 1." +
                                                ApiVersion + " or newer)");
            GetErrorCode = Slot<GetErrorCodeFn>(1);
            GetErrorMessage = Slot<GetErrorMessageFn>(2);
            CreateEnv = Slot<CreateEnvFn>(3);
            CreateSession = Slot<CreateSessionFn>(7);
            Run = Slot<RunFn>(9);
            CreateSessionOptions = Slot<CreateSessionOptionsFn>(10);
            SetSessionGraphOptimizationLevel = Slot<SetIntFn>(23);
            SetIntraOpNumThreads = Slot<SetIntFn>(24);
            SetInterOpNumThreads = Slot<SetIntFn>(25);
            SessionGetInputCount = Slot<CountFn>(30);
            SessionGetOutputCount = Slot<CountFn>(31);
            SessionGetInputName = Slot<GetNameFn>(36);
            SessionGetOutputName = Slot<GetNameFn>(37);
            CreateTensorWithDataAsOrtValue = Slot<CreateTensorWithDataFn>(49);
            GetTensorMutableData = Slot<GetTensorMutableDataFn>(51);
            GetTensorElementType = Slot<GetTensorElementTypeFn>(60);
            GetDimensionsCount = Slot<GetDimensionsCountFn>(61);
            GetDimensions = Slot<GetDimensionsFn>(62);
            GetTensorTypeAndShape = Slot<GetTensorTypeAndShapeFn>(65);
            CreateCpuMemoryInfo = Slot<CreateCpuMemoryInfoFn>(69);
            AllocatorFree = Slot<AllocatorFreeFn>(76);
            GetAllocatorWithDefaultOptions = Slot<GetAllocatorFn>(78);
            ReleaseEnv = Slot<ReleaseFn>(92);
            ReleaseStatus = Slot<ReleaseFn>(93);
            ReleaseMemoryInfo = Slot<ReleaseFn>(94);
            ReleaseSession = Slot<ReleaseFn>(95);
            ReleaseValue = Slot<ReleaseFn>(96);
            ReleaseTensorTypeAndShapeInfo = Slot<ReleaseFn>(99);
            ReleaseSessionOptions = Slot<ReleaseFn>(100);
            AddSessionConfigEntry = Slot<AddConfigEntryFn>(130);
        }

        static T Fn<T>(IntPtr p) where T : class
        {
            if (p == IntPtr.Zero) throw new InvalidOperationException("NULL function pointer for " + typeof(T).Name);
            return (T)(object)Marshal.GetDelegateForFunctionPointer(p, typeof(T));  // the non-generic overload: Mono 4.x has both, this is the portable one
        }

        T Slot<T>(int slot) where T : class { return Fn<T>(Marshal.ReadIntPtr(api, slot * IntPtr.Size)); }

        static readonly string[] ErrorCodes =
        {
            "ORT_OK", "ORT_FAIL", "ORT_INVALID_ARGUMENT", "ORT_NO_SUCHFILE", "ORT_NO_MODEL", "ORT_ENGINE_ERROR",
            "ORT_RUNTIME_EXCEPTION", "ORT_INVALID_PROTOBUF", "ORT_MODEL_LOADED", "ORT_NOT_IMPLEMENTED", "ORT_INVALID_GRAPH",
            "ORT_EP_FAIL", "ORT_MODEL_LOAD_CANCELED", "ORT_MODEL_REQUIRES_COMPILATION", "ORT_NOT_FOUND", "ORT_DEVICE_RESET",
        };

        /// <summary>Throws for a non-NULL OrtStatus* (and releases it); `function` names the OrtApi function.</summary>
        public void Check(IntPtr status, string function)
        {
            if (status != IntPtr.Zero) throw Error(status, function);
        }

        public Exception Error(IntPtr status, string function)
        {
            int code = GetErrorCode(status);
            string message = OrtUtf8.Read(GetErrorMessage(status)) ?? "";
            ReleaseStatus(status);
            string name = code >= 0 && code < ErrorCodes.Length ? ErrorCodes[code] : "error code " + code;
            return new InvalidOperationException("ONNX Runtime " + function + " failed (" + name + "): " + message);
        }
    }

    /// <summary>One ONNX Runtime session and what its callers share: the API table, the environment,
    /// a CPU memory info, and the input/output names as native char* arrays.</summary>
    public sealed class OrtRunner : IDisposable
    {
        internal readonly OrtApiBinding Api;
        internal IntPtr Session;
        internal IntPtr MemoryInfo;        // CPU, OrtArenaAllocator, OrtMemTypeDefault: created once, read by every caller
        internal IntPtr InputNamesNative;  // const char*[n_inputs]
        internal IntPtr OutputNamesNative; // const char*[n_outputs]
        IntPtr env, options;
        readonly string[] inputNames = new string[0], outputNames = new string[0];
        readonly List<OrtCaller> callers = new List<OrtCaller>();
        readonly object gate = new object();
        volatile bool disposed;

        const int OrtLoggingLevelWarning = 2;
        const int OrtArenaAllocator = 1;
        const int OrtMemTypeDefault = 0;

        public OrtRunner(string libraryPath, string modelPath, int intraOpThreads, int graphOptimizationLevel, bool allowSpinning)
        {
            if (modelPath == null) throw new ArgumentNullException("modelPath");
            if (graphOptimizationLevel != 0 && graphOptimizationLevel != 1 && graphOptimizationLevel != 2 &&
                graphOptimizationLevel != 3 && graphOptimizationLevel != 99)
                throw new ArgumentException("graphOptimizationLevel must be 0 (disable), 1 (basic), 2 (extended), 3 (layout) or 99 (all), not " +
                                            graphOptimizationLevel);
            Api = new OrtApiBinding(libraryPath);
            try
            {
                IntPtr logId = OrtUtf8.Alloc("clr-onnxruntime");
                try { Api.Check(Api.CreateEnv(OrtLoggingLevelWarning, logId, out env), "CreateEnv"); }
                finally { Marshal.FreeHGlobal(logId); }
                Api.Check(Api.CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, out MemoryInfo), "CreateCpuMemoryInfo");
                Api.Check(Api.CreateSessionOptions(out options), "CreateSessionOptions");
                Api.Check(Api.SetIntraOpNumThreads(options, intraOpThreads), "SetIntraOpNumThreads");
                Api.Check(Api.SetInterOpNumThreads(options, 1), "SetInterOpNumThreads");
                Api.Check(Api.SetSessionGraphOptimizationLevel(options, graphOptimizationLevel), "SetSessionGraphOptimizationLevel");
                IntPtr key = OrtUtf8.Alloc("session.intra_op.allow_spinning");
                IntPtr value = OrtUtf8.Alloc(allowSpinning ? "1" : "0");
                try { Api.Check(Api.AddSessionConfigEntry(options, key, value), "AddSessionConfigEntry"); }
                finally { Marshal.FreeHGlobal(key); Marshal.FreeHGlobal(value); }
                IntPtr path = OrtUtf8.Alloc(modelPath);  // ORTCHAR_T is char (UTF-8) on Linux
                try { Api.Check(Api.CreateSession(env, path, options, out Session), "CreateSession"); }
                finally { Marshal.FreeHGlobal(path); }

                IntPtr allocator;
                Api.Check(Api.GetAllocatorWithDefaultOptions(out allocator), "GetAllocatorWithDefaultOptions");  // not to be released
                inputNames = ReadNames(allocator, true);
                outputNames = ReadNames(allocator, false);
                InputNamesNative = NativeStrings(inputNames);
                OutputNamesNative = NativeStrings(outputNames);
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        string[] ReadNames(IntPtr allocator, bool inputs)
        {
            UIntPtr count;
            Api.Check(inputs ? Api.SessionGetInputCount(Session, out count) : Api.SessionGetOutputCount(Session, out count),
                      inputs ? "SessionGetInputCount" : "SessionGetOutputCount");
            var names = new string[(int)count.ToUInt32()];
            for (int i = 0; i < names.Length; i++)
            {
                IntPtr p;
                if (inputs) Api.Check(Api.SessionGetInputName(Session, new UIntPtr((uint)i), allocator, out p), "SessionGetInputName");
                else Api.Check(Api.SessionGetOutputName(Session, new UIntPtr((uint)i), allocator, out p), "SessionGetOutputName");
                try { names[i] = OrtUtf8.Read(p); }
                finally { Api.Check(Api.AllocatorFree(allocator, p), "AllocatorFree"); }
            }
            return names;
        }

        static IntPtr NativeStrings(string[] strings)
        {
            IntPtr table = Marshal.AllocHGlobal(Math.Max(1, strings.Length) * IntPtr.Size);
            for (int i = 0; i < strings.Length; i++) Marshal.WriteIntPtr(table, i * IntPtr.Size, OrtUtf8.Alloc(strings[i]));
            return table;
        }

        static void FreeNativeStrings(IntPtr table, int count)
        {
            if (table == IntPtr.Zero) return;
            for (int i = 0; i < count; i++) Marshal.FreeHGlobal(Marshal.ReadIntPtr(table, i * IntPtr.Size));
            Marshal.FreeHGlobal(table);
        }

        public string[] InputNames { get { return (string[])inputNames.Clone(); } }
        public string[] OutputNames { get { return (string[])outputNames.Clone(); } }
        internal int InputCount { get { return inputNames.Length; } }
        internal int OutputCountInternal { get { return outputNames.Length; } }
        internal string OutputName(int i) { return outputNames[i]; }
        public string LibraryVersion { get { return Api.VersionString; } }
        public int ApiVersion { get { return (int)OrtApiBinding.ApiVersion; } }
        internal bool IsDisposed { get { return disposed; } }

        /// <summary>Untimed set-up of one caller: its inputs (in InputNames order) copied once from native
        /// memory at `addresses` into new .NET arrays.</summary>
        public OrtCaller NewCaller(string[] dtypes, long[][] shapes, long[] addresses, bool reuseOutputs)
        {
            if (disposed) throw new ObjectDisposedException("OrtRunner");
            if (dtypes == null || shapes == null || addresses == null) throw new ArgumentNullException("dtypes/shapes/addresses");
            if (dtypes.Length != inputNames.Length || shapes.Length != inputNames.Length || addresses.Length != inputNames.Length)
                throw new ArgumentException("the model has " + inputNames.Length + " inputs (" + string.Join(", ", inputNames) + "), got " +
                                            dtypes.Length + " dtypes, " + shapes.Length + " shapes and " + addresses.Length + " addresses");
            var caller = new OrtCaller(this, dtypes, shapes, addresses, reuseOutputs);
            lock (gate)
            {
                if (disposed) { caller.Dispose(); throw new ObjectDisposedException("OrtRunner"); }
                callers.Add(caller);
            }
            return caller;
        }

        internal void Forget(OrtCaller caller) { lock (gate) callers.Remove(caller); }

        /// <summary>Disposes the callers still alive (none may be calling), then releases the session,
        /// its options, the memory info and the environment. Idempotent.</summary>
        public void Dispose()
        {
            OrtCaller[] alive;
            lock (gate)
            {
                if (disposed) return;
                disposed = true;
                alive = callers.ToArray();
                callers.Clear();
            }
            foreach (OrtCaller c in alive) c.Dispose();
            if (Api == null) return;
            if (Session != IntPtr.Zero) { Api.ReleaseSession(Session); Session = IntPtr.Zero; }
            if (options != IntPtr.Zero) { Api.ReleaseSessionOptions(options); options = IntPtr.Zero; }
            if (MemoryInfo != IntPtr.Zero) { Api.ReleaseMemoryInfo(MemoryInfo); MemoryInfo = IntPtr.Zero; }
            if (env != IntPtr.Zero) { Api.ReleaseEnv(env); env = IntPtr.Zero; }
            FreeNativeStrings(InputNamesNative, inputNames.Length); InputNamesNative = IntPtr.Zero;
            FreeNativeStrings(OutputNamesNative, outputNames.Length); OutputNamesNative = IntPtr.Zero;
        }
    }

    /// <summary>One caller: its own inputs in .NET arrays and its own outputs, one inference per CallOnce.
    /// Callers of one runner may call concurrently from different threads; one caller is one thread's.</summary>
    public sealed class OrtCaller : ICaller, IDisposable
    {
        readonly OrtRunner runner;
        readonly OrtApiBinding api;
        readonly bool reuseOutputs;
        readonly int nIn, nOut;

        // inputs: .NET arrays, their element types, byte sizes and native shapes (int64[rank] each)
        readonly Array[] inputs;
        readonly int[] inTypes;
        readonly UIntPtr[] inBytes;
        readonly IntPtr[] inShapes;
        readonly UIntPtr[] inRanks;
        readonly GCHandle[] inPins;  // per call
        int wrapped;                 // inputs pinned + wrapped so far in this call

        // native arrays handed to Run: OrtValue*[nIn], OrtValue*[nOut] (ORT-allocated), OrtValue*[nOut] (bound)
        IntPtr inValues, outValues, boundValues;
        IntPtr dims;        // int64 scratch for GetDimensions
        int dimsCapacity;

        // outputs of the last call: .NET arrays (pinned while current), types, shapes
        readonly Array[] outData;
        readonly GCHandle[] outPins;
        readonly int[] outTypes;
        readonly long[][] outShapes;
        readonly long[] outBytes;
        bool haveOutputs;   // a call has completed: outData/outShapes describe it
        bool bound;         // outputs are preallocated .NET arrays bound as OrtValues
        bool bindFailed;    // a bound call failed once: stay with ORT-allocated outputs
        bool disposed;

        internal OrtCaller(OrtRunner runner, string[] dtypes, long[][] shapes, long[] addresses, bool reuseOutputs)
        {
            this.runner = runner;
            api = runner.Api;
            this.reuseOutputs = reuseOutputs;
            nIn = runner.InputCount;
            nOut = runner.OutputCountInternal;
            inputs = new Array[nIn];
            inTypes = new int[nIn];
            inBytes = new UIntPtr[nIn];
            inShapes = new IntPtr[nIn];
            inRanks = new UIntPtr[nIn];
            inPins = new GCHandle[nIn];
            outData = new Array[nOut];
            outPins = new GCHandle[nOut];
            outTypes = new int[nOut];
            outShapes = new long[nOut][];
            outBytes = new long[nOut];
            try
            {
                for (int i = 0; i < nIn; i++)
                {
                    long[] shape = shapes[i] ?? new long[0];
                    int type = OrtTypes.FromNumpy(dtypes[i]);
                    long count = OrtTypes.Count(shape);
                    long bytes = count * OrtTypes.ItemSize(type);
                    Array a = OrtTypes.NewArray(type, count);
                    if (bytes > 0)
                    {
                        if (addresses[i] == 0) throw new ArgumentException("input " + i + " has a NULL address");
                        CopyInto(new IntPtr(addresses[i]), a, bytes);
                    }
                    inputs[i] = a;
                    inTypes[i] = type;
                    inBytes[i] = new UIntPtr((ulong)bytes);
                    inShapes[i] = Marshal.AllocHGlobal(Math.Max(1, shape.Length) * sizeof(long));
                    if (shape.Length > 0) Marshal.Copy(shape, 0, inShapes[i], shape.Length);
                    inRanks[i] = new UIntPtr((uint)shape.Length);
                }
                inValues = AllocZeroed(nIn);
                outValues = AllocZeroed(nOut);
                boundValues = AllocZeroed(nOut);
                dimsCapacity = 8;
                dims = Marshal.AllocHGlobal(dimsCapacity * sizeof(long));
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        static IntPtr AllocZeroed(int pointers)
        {
            IntPtr p = Marshal.AllocHGlobal(Math.Max(1, pointers) * IntPtr.Size);
            for (int i = 0; i < Math.Max(1, pointers); i++) Marshal.WriteIntPtr(p, i * IntPtr.Size, IntPtr.Zero);
            return p;
        }

        static unsafe void CopyInto(IntPtr src, Array dst, long bytes)
        {
            GCHandle h = GCHandle.Alloc(dst, GCHandleType.Pinned);
            try { Buffer.MemoryCopy((void*)src, (void*)h.AddrOfPinnedObject(), bytes, bytes); }
            finally { h.Free(); }
        }

        // ---- one call, in three phases ----

        /// <summary>wrap_in: pin each .NET input array and wrap it as an OrtValue over its memory (no copy).</summary>
        unsafe void WrapIn()
        {
            IntPtr* values = (IntPtr*)inValues;
            IntPtr mem = runner.MemoryInfo;
            for (int i = 0; i < nIn; i++)
            {
                inPins[i] = GCHandle.Alloc(inputs[i], GCHandleType.Pinned);
                wrapped = i + 1;
                IntPtr v;
                IntPtr status = api.CreateTensorWithDataAsOrtValue(mem, inPins[i].AddrOfPinnedObject(), inBytes[i], inShapes[i], inRanks[i],
                                                                   inTypes[i], out v);
                if (status != IntPtr.Zero)
                {
                    Exception e = api.Error(status, "CreateTensorWithDataAsOrtValue");
                    ReleaseInputs();
                    throw e;
                }
                values[i] = v;
            }
        }

        /// <summary>run: OrtApi Run, into the bound .NET outputs when there are some, else into ORT's own.</summary>
        unsafe void RunOrt()
        {
            IntPtr status;
            if (bound)
            {
                status = api.Run(runner.Session, IntPtr.Zero, runner.InputNamesNative, inValues, new UIntPtr((uint)nIn),
                                 runner.OutputNamesNative, new UIntPtr((uint)nOut), boundValues);
                if (status == IntPtr.Zero) return;
                api.ReleaseStatus(status);  // e.g. the output shapes changed: fall back to ORT-allocated outputs
                Unbind();
                bindFailed = true;
            }
            IntPtr* outs = (IntPtr*)outValues;
            for (int i = 0; i < nOut; i++) outs[i] = IntPtr.Zero;  // NULL: ORT allocates the output
            status = api.Run(runner.Session, IntPtr.Zero, runner.InputNamesNative, inValues, new UIntPtr((uint)nIn),
                             runner.OutputNamesNative, new UIntPtr((uint)nOut), outValues);
            if (status != IntPtr.Zero)
            {
                Exception e = api.Error(status, "Run");
                ReleaseOutputs();
                ReleaseInputs();
                throw e;
            }
        }

        /// <summary>copy_out: ORT-allocated outputs copied into .NET arrays and released (nothing to copy
        /// when bound), then the inputs' OrtValues released and the inputs unpinned.</summary>
        unsafe void CopyOut()
        {
            try
            {
                if (!bound)
                {
                    IntPtr* outs = (IntPtr*)outValues;
                    for (int i = 0; i < nOut; i++) CopyOutput(i, outs[i]);
                    haveOutputs = true;
                    if (reuseOutputs && !bindFailed) Bind();
                }
            }
            finally
            {
                ReleaseOutputs();
                ReleaseInputs();
            }
        }

        /// <summary>Read an ORT-allocated output's type and shape and copy its bytes into this caller's
        /// .NET array for it (a new one only when the type or shape changed).</summary>
        unsafe void CopyOutput(int i, IntPtr value)
        {
            if (value == IntPtr.Zero) throw new InvalidOperationException("ONNX Runtime Run returned no value for output '" + runner.OutputName(i) + "'");
            IntPtr info;
            api.Check(api.GetTensorTypeAndShape(value, out info), "GetTensorTypeAndShape");
            int type;
            int rank;
            try
            {
                api.Check(api.GetTensorElementType(info, out type), "GetTensorElementType");
                UIntPtr r;
                api.Check(api.GetDimensionsCount(info, out r), "GetDimensionsCount");
                rank = (int)r.ToUInt32();
                if (rank > dimsCapacity)
                {
                    Marshal.FreeHGlobal(dims);
                    dims = IntPtr.Zero;
                    dims = Marshal.AllocHGlobal(rank * sizeof(long));
                    dimsCapacity = rank;
                }
                api.Check(api.GetDimensions(info, dims, r), "GetDimensions");
            }
            finally
            {
                api.ReleaseTensorTypeAndShapeInfo(info);
            }
            if (OrtTypes.Numpy(type) == null)
                throw new NotSupportedException("output '" + runner.OutputName(i) + "' has ONNX element type " + type + ", which has no .NET array here");

            long* d = (long*)dims;
            long[] shape = outShapes[i];
            bool same = outData[i] != null && outTypes[i] == type && shape.Length == rank;
            for (int k = 0; same && k < rank; k++) same = shape[k] == d[k];
            if (!same)
            {
                shape = new long[rank];
                for (int k = 0; k < rank; k++) shape[k] = d[k];
                long count = OrtTypes.Count(shape);
                Array a = OrtTypes.NewArray(type, count);
                if (outPins[i].IsAllocated) outPins[i].Free();
                outPins[i] = GCHandle.Alloc(a, GCHandleType.Pinned);  // pinned while it is this output's array
                outData[i] = a;
                outTypes[i] = type;
                outShapes[i] = shape;
                outBytes[i] = count * OrtTypes.ItemSize(type);
            }
            long bytes = outBytes[i];
            if (bytes > 0)
            {
                IntPtr src;
                api.Check(api.GetTensorMutableData(value, out src), "GetTensorMutableData");
                Buffer.MemoryCopy((void*)src, (void*)outPins[i].AddrOfPinnedObject(), bytes, bytes);
            }
        }

        /// <summary>Wrap each output's pinned .NET array as an OrtValue once: Run then writes into it.</summary>
        unsafe void Bind()
        {
            IntPtr* b = (IntPtr*)boundValues;
            IntPtr mem = runner.MemoryInfo;
            for (int i = 0; i < nOut; i++)
            {
                long[] shape = outShapes[i];
                IntPtr v;
                IntPtr status;
                fixed (long* s = shape.Length > 0 ? shape : new long[1])
                    status = api.CreateTensorWithDataAsOrtValue(mem, outPins[i].AddrOfPinnedObject(), new UIntPtr((ulong)outBytes[i]),
                                                                (IntPtr)s, new UIntPtr((uint)shape.Length), outTypes[i], out v);
                if (status != IntPtr.Zero)
                {
                    api.ReleaseStatus(status);  // not bindable: keep ORT-allocated outputs
                    Unbind();
                    bindFailed = true;
                    return;
                }
                b[i] = v;
            }
            bound = true;
        }

        unsafe void Unbind()
        {
            bound = false;
            if (boundValues == IntPtr.Zero) return;
            IntPtr* b = (IntPtr*)boundValues;
            for (int i = 0; i < nOut; i++)
                if (b[i] != IntPtr.Zero) { api.ReleaseValue(b[i]); b[i] = IntPtr.Zero; }
        }

        unsafe void ReleaseOutputs()
        {
            if (outValues == IntPtr.Zero) return;
            IntPtr* outs = (IntPtr*)outValues;
            for (int i = 0; i < nOut; i++)
                if (outs[i] != IntPtr.Zero) { api.ReleaseValue(outs[i]); outs[i] = IntPtr.Zero; }
        }

        unsafe void ReleaseInputs()
        {
            IntPtr* values = (IntPtr*)inValues;
            for (int i = 0; i < wrapped; i++)
            {
                if (values != null && values[i] != IntPtr.Zero) { api.ReleaseValue(values[i]); values[i] = IntPtr.Zero; }
                if (inPins[i].IsAllocated) inPins[i].Free();
            }
            wrapped = 0;
        }

        void CheckUsable()
        {
            if (disposed) throw new ObjectDisposedException("OrtCaller");
            if (runner.IsDisposed) throw new ObjectDisposedException("OrtRunner");
        }

        // ---- the public face ----

        /// <summary>One inference, as the application makes it.</summary>
        public void CallOnce()
        {
            CheckUsable();
            WrapIn();
            RunOrt();
            CopyOut();
        }

        /// <summary>n calls back to back, timed here by Stopwatch. Returns 4n values in ns, per call i at
        /// [4i..4i+3]: total, wrap_in, run, copy_out.</summary>
        public long[] TimeCalls(int n)
        {
            if (n < 0) throw new ArgumentException("n must be >= 0");
            CheckUsable();
            var ns = new long[4 * n];
            long freq = Stopwatch.Frequency;
            for (int i = 0; i < n; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                WrapIn();
                long t1 = Stopwatch.GetTimestamp();
                RunOrt();
                long t2 = Stopwatch.GetTimestamp();
                CopyOut();
                long t3 = Stopwatch.GetTimestamp();
                ns[4 * i] = (t3 - t0) * 1000000000L / freq;
                ns[4 * i + 1] = (t1 - t0) * 1000000000L / freq;
                ns[4 * i + 2] = (t2 - t1) * 1000000000L / freq;
                ns[4 * i + 3] = (t3 - t2) * 1000000000L / freq;
            }
            return ns;
        }

        public int OutputCount { get { return nOut; } }

        /// <summary>True once the outputs are preallocated .NET arrays that ORT writes into.</summary>
        public bool OutputsReused { get { return bound; } }

        void CheckOutput(int i)
        {
            if (disposed) throw new ObjectDisposedException("OrtCaller");
            if (i < 0 || i >= nOut) throw new ArgumentOutOfRangeException("i", "output index " + i + " of " + nOut);
            if (!haveOutputs) throw new InvalidOperationException("no call has completed yet: call CallOnce or TimeCalls first");
        }

        /// <summary>NumPy's name of the last call's output i.</summary>
        public string OutputDType(int i) { CheckOutput(i); return OrtTypes.Numpy(outTypes[i]); }

        public long[] OutputShape(int i) { CheckOutput(i); return (long[])outShapes[i].Clone(); }

        /// <summary>memcpy the last call's output i (a pinned .NET array) to native memory at `address`.</summary>
        public unsafe void CopyOutput(int i, long address)
        {
            CheckOutput(i);
            long bytes = outBytes[i];
            if (bytes == 0) return;
            if (address == 0) throw new ArgumentException("address is NULL");
            Buffer.MemoryCopy((void*)outPins[i].AddrOfPinnedObject(), (void*)new IntPtr(address), bytes, bytes);
        }

        /// <summary>Releases the bound OrtValues, unpins the outputs and frees native memory. Idempotent;
        /// not while another thread is in CallOnce/TimeCalls of this caller.</summary>
        public void Dispose()
        {
            if (disposed) return;
            disposed = true;
            runner.Forget(this);
            ReleaseOutputs();
            if (inValues != IntPtr.Zero) ReleaseInputs();
            Unbind();
            for (int i = 0; i < nOut; i++)
                if (outPins[i].IsAllocated) outPins[i].Free();
            for (int i = 0; i < nIn; i++)
                if (inShapes[i] != IntPtr.Zero) { Marshal.FreeHGlobal(inShapes[i]); inShapes[i] = IntPtr.Zero; }
            FreeIf(ref inValues);
            FreeIf(ref outValues);
            FreeIf(ref boundValues);
            FreeIf(ref dims);
            haveOutputs = false;
        }

        static void FreeIf(ref IntPtr p)
        {
            if (p != IntPtr.Zero) { Marshal.FreeHGlobal(p); p = IntPtr.Zero; }
        }
    }
}
