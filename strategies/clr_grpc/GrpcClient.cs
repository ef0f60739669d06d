// The C# application of the clr-grpc strategies: a client of the grpc strategy's server
// (strategies/grpc/server.py, protocol strategies/grpc/interop_inference.proto) written the way a C#
// team ships one without Grpc.Net.Client / Google.Protobuf (NuGet is not reachable here): .NET's own
// HTTP/2 stack (SocketsHttpHandler, cleartext HTTP/2 with prior knowledge) carries the call, and the
// gRPC framing (1 flag byte + 4-byte big-endian length + message) and the protobuf encoding of
// ModelInferRequest / decoding of ModelInferResponse are written by hand here.
//
// Request:  the tensor metadata (model name, names, datatypes, shapes) is encoded once per caller;
//           each call copies that header and the tensors' raw little-endian bytes from the caller's
//           .NET arrays into the caller's reusable framed-request buffer (client_encode), sent by a
//           ByteArrayContent over that buffer (no per-call array).
// Response: read from the HTTP/2 response stream into the caller's reusable buffer (grown only when
//           a bigger message comes), parsed in place, raw output bytes copied into the caller's output
//           .NET arrays (reused while name, datatype and shape stay the same): client_decode.
// Status:   grpc-status / grpc-message from the trailers (or the headers of a Trailers-Only reply);
//           the server's own decode/compute/encode times from the trailer x-server-timing-ns.
//
// Compiled by Mono's mcs (C# 7) against Mono's reference assemblies, run on CoreCLR (.NET 8): the
// .NET Core-only members (SocketsHttpHandler and its HTTP/2 settings, ConnectCallback for Unix domain
// sockets, HttpRequestMessage.VersionPolicy, HttpResponseMessage.TrailingHeaders) are found once by
// reflection and called through cached delegates. Mono's HttpClient has no HTTP/2: the runner refuses
// to start there.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Net;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace InteropBench
{
    /// <summary>NumPy dtypes, KServe v2 datatypes and the .NET arrays holding them (float16 as raw ushort bits).</summary>
    static class GrpcTypes
    {
        public static string Datatype(string numpy)
        {
            switch (numpy)
            {
                case "float32": return "FP32";
                case "float64": return "FP64";
                case "float16": return "FP16";
                case "int64": return "INT64";
                case "int32": return "INT32";
                case "int16": return "INT16";
                case "int8": return "INT8";
                case "uint8": return "UINT8";
                case "bool": return "BOOL";
                default: throw new NotSupportedException("NumPy dtype '" + numpy + "' has no protocol datatype here");
            }
        }

        /// <summary>NumPy's name of a protocol datatype, or null when it has no .NET array here.</summary>
        public static string Numpy(string datatype)
        {
            switch (datatype)
            {
                case "FP32": return "float32";
                case "FP64": return "float64";
                case "FP16": return "float16";
                case "INT64": return "int64";
                case "INT32": return "int32";
                case "INT16": return "int16";
                case "INT8": return "int8";
                case "UINT8": return "uint8";
                case "BOOL": return "bool";
                default: return null;
            }
        }

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

        static readonly string[] StatusNames =
        {
            "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
            "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
            "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
        };

        public const int Cancelled = 1, Unknown = 2, DeadlineExceeded = 4, ResourceExhausted = 8, Unimplemented = 12,
                         Internal = 13, Unavailable = 14, Unauthenticated = 16, PermissionDenied = 7;

        /// <summary>The error of a non-OK gRPC status: "gRPC NAME (n): message".</summary>
        public static InvalidOperationException Status(int code, string message)
        {
            string name = code >= 0 && code < StatusNames.Length ? StatusNames[code] : "status";
            return new InvalidOperationException("gRPC " + name + " (" + code + "): " + message);
        }

        /// <summary>gRPC's mapping of an HTTP status that is not 200 (no grpc-status) to a status code.</summary>
        public static int FromHttp(int http)
        {
            switch (http)
            {
                case 400: return Internal;
                case 401: return Unauthenticated;
                case 403: return PermissionDenied;
                case 404: return Unimplemented;
                case 429: case 502: case 503: case 504: return Unavailable;
                default: return Unknown;
            }
        }
    }

    /// <summary>The protobuf wire format, the part this protocol needs: varints and length-delimited fields.</summary>
    static class GrpcWire
    {
        public const int Varint = 0, Fixed64 = 1, LengthDelimited = 2, Fixed32 = 5;

        public static int VarintSize(ulong v)
        {
            int n = 1;
            while (v >= 0x80) { v >>= 7; n++; }
            return n;
        }

        public static int WriteVarint(byte[] buf, int pos, ulong v)
        {
            while (v >= 0x80) { buf[pos++] = (byte)(v | 0x80); v >>= 7; }
            buf[pos++] = (byte)v;
            return pos;
        }

        public static void WriteVarint(List<byte> o, ulong v)
        {
            while (v >= 0x80) { o.Add((byte)(v | 0x80)); v >>= 7; }
            o.Add((byte)v);
        }

        public static void WriteTag(List<byte> o, int field, int wire) { WriteVarint(o, (ulong)(uint)(field << 3 | wire)); }

        public static void WriteBytesField(List<byte> o, int field, byte[] b)
        {
            WriteTag(o, field, LengthDelimited);
            WriteVarint(o, (ulong)b.Length);
            o.AddRange(b);
        }

        /// <summary>A proto3 string field: omitted when empty, as protoc's serializers do.</summary>
        public static void WriteStringField(List<byte> o, int field, string s)
        {
            if (string.IsNullOrEmpty(s)) return;
            WriteBytesField(o, field, Encoding.UTF8.GetBytes(s));
        }

        /// <summary>A packed repeated int64 (proto3's default for repeated scalars): omitted when empty;
        /// negative values take 10 bytes (two's complement as uint64), as protobuf writes them.</summary>
        public static void WritePackedInt64(List<byte> o, int field, long[] values)
        {
            if (values.Length == 0) return;
            int size = 0;
            foreach (long v in values) size += VarintSize((ulong)v);
            WriteTag(o, field, LengthDelimited);
            WriteVarint(o, (ulong)size);
            foreach (long v in values) WriteVarint(o, (ulong)v);
        }

        /// <summary>Reads a varint at pos (advanced past it); throws on a truncated or over-long one.</summary>
        public static ulong ReadVarint(byte[] buf, ref int pos, int end)
        {
            ulong result = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (pos >= end) throw Malformed("truncated varint");
                byte b = buf[pos++];
                result |= (ulong)(b & 0x7F) << shift;
                if ((b & 0x80) == 0) return result;
            }
            throw Malformed("varint longer than 10 bytes");
        }

        /// <summary>The length of a length-delimited field at pos (advanced to its first byte), checked against end.</summary>
        public static int ReadLength(byte[] buf, ref int pos, int end)
        {
            ulong len = ReadVarint(buf, ref pos, end);
            if (len > (ulong)(end - pos)) throw Malformed("length-delimited field runs past the end of its message");
            return (int)len;
        }

        /// <summary>Skips the value of a field of this wire type (unknown fields, maps, typed contents).</summary>
        public static void Skip(byte[] buf, ref int pos, int end, int wire)
        {
            switch (wire)
            {
                case Varint: ReadVarint(buf, ref pos, end); return;
                case Fixed64: pos += 8; break;
                case Fixed32: pos += 4; break;
                case LengthDelimited: { int len = ReadLength(buf, ref pos, end); pos += len; return; }
                default: throw Malformed("unsupported wire type " + wire);
            }
            if (pos > end) throw Malformed("truncated fixed-size field");
        }

        public static InvalidOperationException Malformed(string why)
        {
            return GrpcTypes.Status(GrpcTypes.Internal, "malformed ModelInferResponse from the server: " + why);
        }
    }

    /// <summary>One gRPC server and what its callers share: one HttpClient over one SocketsHttpHandler
    /// (HTTP/2 with prior knowledge, over TCP or a Unix domain socket), the call's URI and deadline.</summary>
    public sealed class GrpcRunner : IDisposable
    {
        const string Method = "/interop.inference.v2.GRPCInferenceService/ModelInfer";
        const int StreamWindowBytes = 16 * 1024 * 1024;  // SocketsHttpHandler's ceiling (MaxHttp2StreamWindowSize)

        internal readonly HttpClient Client;
        internal readonly Uri Uri;
        internal readonly string Address;
        internal readonly string ModelName;
        internal readonly double DeadlineS;
        internal readonly int DeadlineMs;        // for the per-call CancellationTokenSource; 0: none
        internal readonly string GrpcTimeout;    // the grpc-timeout header; null: none
        internal readonly int MaxMessageBytes;
        internal readonly Version Http2 = new Version(2, 0);
        readonly string settings;
        volatile bool disposed;

        // .NET Core-only members, reached once by reflection
        internal readonly Action<HttpRequestMessage> RequestVersionExact;             // request.VersionPolicy = RequestVersionExact
        internal readonly Func<HttpResponseMessage, HttpResponseHeaders> TrailingHeaders;

        /// <summary>address: "127.0.0.1:PORT" (any host:port) or "unix:/path/to.sock", as the server's port
        /// file writes it; modelName goes into every ModelInferRequest; deadlineS per call (0 or less: none);
        /// maxMessageBytes bounds the messages sent and received, as the server's own limit.</summary>
        public GrpcRunner(string address, string modelName, double deadlineS, int maxMessageBytes)
        {
            if (Type.GetType("Mono.Runtime") != null)
                throw new NotSupportedException("the C# gRPC client needs CoreCLR (.NET 5 or newer): Mono's HttpClient has no HTTP/2");
            if (string.IsNullOrEmpty(address)) throw new ArgumentException("the server address is empty");
            if (maxMessageBytes <= 0) throw new ArgumentException("maxMessageBytes must be positive, not " + maxMessageBytes);
            Address = address;
            ModelName = modelName ?? "";
            DeadlineS = deadlineS;
            MaxMessageBytes = maxMessageBytes;
            if (deadlineS > 0)
            {
                DeadlineMs = (int)Math.Min(int.MaxValue - 1, Math.Max(1.0, Math.Ceiling(deadlineS * 1000.0)));
                GrpcTimeout = TimeoutHeader(deadlineS);
            }

            Type handlerType = Type.GetType("System.Net.Http.SocketsHttpHandler, System.Net.Http");
            if (handlerType == null)
                throw new NotSupportedException("System.Net.Http.SocketsHttpHandler is missing: the C# gRPC client needs CoreCLR (.NET 5 or newer)");
            // cleartext HTTP/2 ("h2c" with prior knowledge): needed on .NET Core 3.x, harmless after
            AppContext.SetSwitch("System.Net.Http.SocketsHttpHandler.Http2UnencryptedSupport", true);

            var applied = new List<string>();
            var handler = (HttpMessageHandler)Activator.CreateInstance(handlerType);
            try
            {
                Set(handler, "UseProxy", false, applied);                 // loopback: no http_proxy detour
                Set(handler, "UseCookies", false, applied);               // no CookieContainer work per call
                Set(handler, "AllowAutoRedirect", false, applied);
                Set(handler, "EnableMultipleHttp2Connections", true, applied);  // more connections past the server's stream limit (as Grpc.Net.Client)
                Set(handler, "PooledConnectionIdleTimeout", Timeout.InfiniteTimeSpan, applied);  // keep the connection between runs (as Grpc.Net.Client)
                SetWindow(handler, handlerType, StreamWindowBytes, applied);  // a large response streams without waiting for WINDOW_UPDATEs
                SetIfPresent(handler, handlerType, "ActivityHeadersPropagator", null, "null (no traceparent header)", applied);

                string where;
                if (address.StartsWith("unix:", StringComparison.Ordinal))
                {
                    string path = address.Substring("unix:".Length);
                    if (path.StartsWith("//", StringComparison.Ordinal)) path = path.Substring(2);  // unix:///abs/path form
                    if (path.Length == 0) throw new ArgumentException("empty Unix domain socket path in '" + address + "'");
                    SetUnixConnect(handler, handlerType, path);
                    applied.Add("ConnectCallback=Unix domain socket " + path);
                    Uri = new Uri("http://localhost" + Method);
                    where = "Unix domain socket " + path;
                }
                else
                {
                    Uri = new Uri("http://" + address + Method);
                    where = "TCP " + address;
                }
                Client = new HttpClient(handler, true);
                Client.Timeout = Timeout.InfiniteTimeSpan;  // the deadline is per call: grpc-timeout + a CancellationToken

                PropertyInfo policy = typeof(HttpRequestMessage).GetProperty("VersionPolicy");
                if (policy == null) throw new NotSupportedException("HttpRequestMessage.VersionPolicy is missing: the C# gRPC client needs .NET 5 or newer");
                object exact = Enum.Parse(policy.PropertyType, "RequestVersionExact");
                RequestVersionExact = (Action<HttpRequestMessage>)typeof(GrpcRunner)
                    .GetMethod("PolicySetter", BindingFlags.NonPublic | BindingFlags.Static)
                    .MakeGenericMethod(policy.PropertyType).Invoke(null, new object[] { policy.GetSetMethod(), exact });
                PropertyInfo trailing = typeof(HttpResponseMessage).GetProperty("TrailingHeaders");
                if (trailing == null) throw new NotSupportedException("HttpResponseMessage.TrailingHeaders is missing: the C# gRPC client needs .NET Core 3.0 or newer");
                TrailingHeaders = (Func<HttpResponseMessage, HttpResponseHeaders>)Delegate.CreateDelegate(
                    typeof(Func<HttpResponseMessage, HttpResponseHeaders>), trailing.GetGetMethod());

                settings = "HTTP/2 cleartext, prior knowledge (Version 2.0, RequestVersionExact) over " + where +
                           "; one HttpClient (SocketsHttpHandler) shared by all callers; " + string.Join(", ", applied) +
                           "; grpc-timeout " + (GrpcTimeout ?? "none") + "; max message " + maxMessageBytes + " bytes";
            }
            catch
            {
                if (Client != null) Client.Dispose(); else handler.Dispose();
                throw;
            }
        }

        static void Set(object handler, string name, object value, List<string> applied)
        {
            PropertyInfo p = handler.GetType().GetProperty(name);
            if (p == null) throw new NotSupportedException("SocketsHttpHandler." + name + " is missing: the C# gRPC client needs .NET 5 or newer");
            p.SetValue(handler, value, null);
            applied.Add(name + "=" + (value is TimeSpan && (TimeSpan)value == Timeout.InfiniteTimeSpan ? "infinite" :
                                      value is bool ? ((bool)value ? "true" : "false") : Convert.ToString(value)));
        }

        static void SetIfPresent(object handler, Type type, string name, object value, string shown, List<string> applied)
        {
            PropertyInfo p = type.GetProperty(name);
            if (p == null || !p.CanWrite) return;
            p.SetValue(handler, value, null);
            applied.Add(name + "=" + shown);
        }

        static void SetWindow(object handler, Type type, int window, List<string> applied)
        {
            PropertyInfo p = type.GetProperty("InitialHttp2StreamWindowSize");
            if (p == null) return;  // .NET before 6: the 64 KiB default
            while (true)
            {
                try
                {
                    p.SetValue(handler, window, null);
                    applied.Add("InitialHttp2StreamWindowSize=" + window);
                    return;
                }
                catch (TargetInvocationException e)
                {
                    // above System.Net.SocketsHttpHandler.Http2MaxStreamWindowSize (16 MiB unless configured)
                    if (!(e.InnerException is ArgumentOutOfRangeException) || window <= 65535) throw;
                    window = Math.Max(65535, window / 2);
                }
            }
        }

        /// <summary>handler.ConnectCallback = (context, token) => a NetworkStream over a Socket connected to
        /// the Unix domain socket `path`. The delegate type Func&lt;SocketsHttpConnectionContext,
        /// CancellationToken, ValueTask&lt;Stream&gt;&gt; is only known at run time: UnixConnector is closed
        /// over it by MakeGenericMethod.</summary>
        static void SetUnixConnect(object handler, Type handlerType, string path)
        {
            PropertyInfo cb = handlerType.GetProperty("ConnectCallback");
            Type endPointType = Type.GetType("System.Net.Sockets.UnixDomainSocketEndPoint, System.Net.Sockets");
            if (cb == null || endPointType == null)
                throw new NotSupportedException("SocketsHttpHandler.ConnectCallback or UnixDomainSocketEndPoint is missing: Unix domain sockets need .NET 5 or newer");
            var endPoint = (EndPoint)Activator.CreateInstance(endPointType, path);
            Type[] args = cb.PropertyType.GetGenericArguments();  // SocketsHttpConnectionContext, CancellationToken, ValueTask<Stream>
            ConstructorInfo fromTask = args.Length == 3 ? args[2].GetConstructor(new[] { typeof(Task<Stream>) }) : null;
            if (fromTask == null) throw new NotSupportedException("unexpected ConnectCallback type " + cb.PropertyType);
            object callback = typeof(GrpcRunner).GetMethod("UnixConnector", BindingFlags.NonPublic | BindingFlags.Static)
                .MakeGenericMethod(args[0], args[2]).Invoke(null, new object[] { endPoint, path, fromTask });
            cb.SetValue(handler, callback, null);
        }

        static Func<TContext, CancellationToken, TResult> UnixConnector<TContext, TResult>(EndPoint endPoint, string path, ConstructorInfo fromTask)
        {
            return (context, token) => (TResult)fromTask.Invoke(new object[] { ConnectUnix(endPoint, path, token) });
        }

        internal const string UnixConnectError = "cannot connect to the Unix domain socket ";

        static Task<Stream> ConnectUnix(EndPoint endPoint, string path, CancellationToken token)
        {
            var tcs = new TaskCompletionSource<Stream>();
            if (token.IsCancellationRequested) { tcs.SetCanceled(); return tcs.Task; }
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                socket.Connect(endPoint);  // a local connect: immediate, or refused
                tcs.SetResult(new NetworkStream(socket, true));
            }
            catch (Exception e)
            {
                socket.Close();
                // .NET reports a missing socket file (ENOENT) as "Cannot assign requested address": say what it is
                string why = File.Exists(path) ? e.Message : "no such socket file (is the server running?)";
                tcs.SetException(new IOException(UnixConnectError + path + ": " + why, e));
            }
            return tcs.Task;
        }

        static Action<HttpRequestMessage> PolicySetter<TPolicy>(MethodInfo setter, object value)
        {
            var set = (Action<HttpRequestMessage, TPolicy>)Delegate.CreateDelegate(typeof(Action<HttpRequestMessage, TPolicy>), setter);
            var v = (TPolicy)value;
            return m => set(m, v);
        }

        /// <summary>gRPC's grpc-timeout: at most 8 digits and a unit; the coarsest unit that states the
        /// deadline exactly, else the finest that fits, rounded up.</summary>
        static string TimeoutHeader(double seconds)
        {
            double ns = Math.Max(1.0, Math.Round(seconds * 1e9));  // whole ns (0.0005 * 1e9 is not exactly 500000)
            string[] units = { "H", "M", "S", "m", "u", "n" };
            double[] per = { 3600e9, 60e9, 1e9, 1e6, 1e3, 1 };
            for (int i = 0; i < units.Length; i++)
                if (ns % per[i] == 0 && ns / per[i] < 1e8) return ((long)(ns / per[i])).ToString() + units[i];
            for (int i = units.Length - 1; i >= 0; i--)
            {
                double v = Math.Ceiling(ns / per[i]);
                if (v < 1e8) return ((long)v).ToString() + units[i];
            }
            return "99999999H";
        }

        public string Settings { get { return settings; } }

        internal bool IsDisposed { get { return disposed; } }

        /// <summary>Untimed set-up of one caller: its inputs (names, NumPy dtypes, shapes) copied from
        /// native memory at `addresses` into the caller's own .NET arrays, the request header encoded.</summary>
        public GrpcCaller NewCaller(string[] names, string[] dtypes, long[][] shapes, long[] addresses)
        {
            if (disposed) throw new ObjectDisposedException("GrpcRunner");
            if (names == null || dtypes == null || shapes == null || addresses == null)
                throw new ArgumentNullException("names/dtypes/shapes/addresses");
            if (dtypes.Length != names.Length || shapes.Length != names.Length || addresses.Length != names.Length)
                throw new ArgumentException(names.Length + " names but " + dtypes.Length + " dtypes, " + shapes.Length +
                                            " shapes and " + addresses.Length + " addresses");
            var inputs = new Array[names.Length];
            for (int i = 0; i < names.Length; i++)
            {
                long[] shape = shapes[i] ?? new long[0];
                long count = GrpcTypes.Count(shape);
                long bytes = count * Dtypes.ItemSize(dtypes[i]);
                Array a = Dtypes.NewArray(dtypes[i], count);
                if (bytes > 0)
                {
                    if (addresses[i] == 0) throw new ArgumentException("input '" + names[i] + "' has a NULL address");
                    CopyFromNative(new IntPtr(addresses[i]), a, bytes);
                }
                inputs[i] = a;
            }
            return new GrpcCaller(this, names, dtypes, shapes, inputs);
        }

        static unsafe void CopyFromNative(IntPtr src, Array dst, long bytes)
        {
            GCHandle h = GCHandle.Alloc(dst, GCHandleType.Pinned);
            try { Buffer.MemoryCopy((void*)src, (void*)h.AddrOfPinnedObject(), bytes, bytes); }
            finally { h.Free(); }
        }

        /// <summary>ModelInferRequest's metadata, serialized as protoc does (fields in number order, proto3
        /// defaults omitted): model_name (1), then per input an InferInputTensor (5) with name (1),
        /// datatype (2), packed shape (3). The raw_input_contents (7) follow it, field 7 being the highest.</summary>
        internal static byte[] EncodeHeader(string modelName, string[] names, string[] dtypes, long[][] shapes)
        {
            var o = new List<byte>(64 + 32 * names.Length);
            GrpcWire.WriteStringField(o, 1, modelName);
            for (int i = 0; i < names.Length; i++)
            {
                var t = new List<byte>(32);
                GrpcWire.WriteStringField(t, 1, names[i]);
                GrpcWire.WriteStringField(t, 2, GrpcTypes.Datatype(dtypes[i]));
                GrpcWire.WritePackedInt64(t, 3, shapes[i] ?? new long[0]);
                GrpcWire.WriteBytesField(o, 5, t.ToArray());
            }
            return o.ToArray();
        }

        /// <summary>The tag and length of raw_input_contents (7) for `bytes` bytes.</summary>
        internal static byte[] RawPrefix(long bytes)
        {
            var o = new List<byte>(8);
            GrpcWire.WriteTag(o, 7, GrpcWire.LengthDelimited);
            GrpcWire.WriteVarint(o, (ulong)bytes);
            return o.ToArray();
        }

        /// <summary>For tests: the unframed ModelInferRequest this client sends for these tensors.</summary>
        public static byte[] EncodeRequestForTest(string modelName, string[] names, string[] dtypes, long[][] shapes, byte[][] raw)
        {
            if (names == null || dtypes == null || shapes == null || raw == null) throw new ArgumentNullException("names/dtypes/shapes/raw");
            if (dtypes.Length != names.Length || shapes.Length != names.Length || raw.Length != names.Length)
                throw new ArgumentException("names, dtypes, shapes and raw differ in length");
            var o = new List<byte>(EncodeHeader(modelName, names, dtypes, shapes));
            foreach (byte[] r in raw)
            {
                o.AddRange(RawPrefix(r.Length));
                o.AddRange(r);
            }
            return o.ToArray();
        }

        public static long Gen2Collections() { return GC.CollectionCount(2); }

        /// <summary>Closes the HttpClient and its connections. Idempotent; not while a caller is calling.</summary>
        public void Dispose()
        {
            if (disposed) return;
            disposed = true;
            if (Client != null) Client.Dispose();
        }
    }

    /// <summary>One caller: its own inputs in .NET arrays, its own framed-request and response buffers and
    /// its own output arrays; one ModelInfer per CallOnce. One caller is one thread's; the callers of
    /// a runner call concurrently over its one HttpClient.</summary>
    public sealed class GrpcCaller : ICaller
    {
        readonly GrpcRunner runner;
        readonly Array[] inputs;
        readonly int[] inputBytes;

        // The framed request: [flag 0][length, 4 bytes big-endian][header][prefix 0][raw 0][prefix 1][raw 1]...
        // Its bytes never change here (the caller's inputs are its own and unchanged), so it could be built
        // once and sent as is: what an application serializing into a pooled buffer ends up with. An
        // application with new data each call pays for copying that data into the buffer, so Encode does
        // that copy every call, honestly, with the (tiny) header and prefixes: client_encode.
        readonly byte[] header;
        readonly byte[][] prefixes;
        readonly byte[] request;
        readonly int messageBytes;

        // the response: its 5-byte frame header, its message (grown only when a bigger one comes)
        readonly byte[] frame = new byte[5];
        readonly byte[] probe = new byte[1];
        byte[] response = new byte[64 * 1024];
        int responseBytes;

        // the per-call deadline: one CancellationTokenSource rearmed per call (CancelAfter), replaced only
        // once it fired; when it fires while the response body is read, the response is disposed (which
        // wakes the blocked read)
        CancellationTokenSource deadline;
        HttpResponseMessage inFlight;
        volatile bool deadlineFired;

        // the parse of the last response: per output tensor, where its fields are in `response`
        int parsedOutputs, parsedRaws;
        int[] nameOff = new int[4], nameLen = new int[4], typeOff = new int[4], typeLen = new int[4];
        int[] shapeStart = new int[4], shapeRank = new int[4], rawOff = new int[4], rawLen = new int[4];
        bool[] hasTyped = new bool[4];
        long[] dims = new long[16];
        int dimCount;

        // the outputs of the last call, reused while their name, datatype and shape stay the same
        int nOut;
        byte[][] outNameBytes = new byte[0][], outTypeBytes = new byte[0][];
        string[] outNames = new string[0], outDtypes = new string[0];
        long[][] outShapes = new long[0][];
        Array[] outData = new Array[0];
        long[] outBytes = new long[0];
        bool haveOutputs;

        // the server's phases of the last call (trailer x-server-timing-ns), in ns
        long serverDecode, serverCompute, serverEncode;

        internal GrpcCaller(GrpcRunner runner, string[] names, string[] dtypes, long[][] shapes, Array[] inputs)
        {
            this.runner = runner;
            this.inputs = inputs;
            header = GrpcRunner.EncodeHeader(runner.ModelName, names, dtypes, shapes);
            prefixes = new byte[inputs.Length][];
            inputBytes = new int[inputs.Length];
            long size = header.Length;
            for (int i = 0; i < inputs.Length; i++)
            {
                long bytes = (long)Buffer.ByteLength(inputs[i]);
                prefixes[i] = GrpcRunner.RawPrefix(bytes);
                size += prefixes[i].Length + bytes;
                if (size > int.MaxValue - 5) throw new ArgumentException("the request exceeds 2 GiB");
                inputBytes[i] = (int)bytes;
            }
            messageBytes = (int)size;
            request = new byte[5 + messageBytes];
            if (runner.DeadlineMs > 0) deadline = NewDeadline();
        }

        CancellationTokenSource NewDeadline()
        {
            var cts = new CancellationTokenSource();
            cts.Token.Register(s => ((GrpcCaller)s).OnDeadline(), this);
            return cts;
        }

        void OnDeadline()
        {
            deadlineFired = true;
            HttpResponseMessage r = Volatile.Read(ref inFlight);
            if (r != null) r.Dispose();
        }

        // ---- one call, in its phases ----

        /// <summary>client_encode: frame header, message header, and each input's raw bytes copied from
        /// its .NET array into the framed request buffer.</summary>
        void Encode()
        {
            byte[] b = request;
            int n = messageBytes;
            b[0] = 0;  // not compressed
            b[1] = (byte)(n >> 24); b[2] = (byte)(n >> 16); b[3] = (byte)(n >> 8); b[4] = (byte)n;
            int pos = 5;
            Buffer.BlockCopy(header, 0, b, pos, header.Length);
            pos += header.Length;
            for (int i = 0; i < inputs.Length; i++)
            {
                byte[] p = prefixes[i];
                Buffer.BlockCopy(p, 0, b, pos, p.Length);
                pos += p.Length;
                Buffer.BlockCopy(inputs[i], 0, b, pos, inputBytes[i]);
                pos += inputBytes[i];
            }
        }

        /// <summary>transport: POST the framed request over HTTP/2 and read the response message into
        /// `response` to the end of the stream; then the status (trailers, or Trailers-Only headers)
        /// and the server's timings.</summary>
        void Exchange()
        {
            if (messageBytes > runner.MaxMessageBytes)
                throw GrpcTypes.Status(GrpcTypes.ResourceExhausted, "Sent message larger than max (" + messageBytes + " vs. " +
                                       runner.MaxMessageBytes + ") to " + runner.Address);
            CancellationToken token = CancellationToken.None;
            if (deadline != null)
            {
                if (deadline.IsCancellationRequested) { deadline.Dispose(); deadline = NewDeadline(); }
                deadlineFired = false;
                deadline.CancelAfter(runner.DeadlineMs);
                token = deadline.Token;
            }
            var message = new HttpRequestMessage(HttpMethod.Post, runner.Uri);
            HttpResponseMessage r = null;
            try
            {
                message.Version = runner.Http2;
                runner.RequestVersionExact(message);
                message.Headers.TryAddWithoutValidation("te", "trailers");
                if (runner.GrpcTimeout != null) message.Headers.TryAddWithoutValidation("grpc-timeout", runner.GrpcTimeout);
                var content = new ByteArrayContent(request, 0, request.Length);
                content.Headers.TryAddWithoutValidation("Content-Type", "application/grpc");
                message.Content = content;

                r = runner.Client.SendAsync(message, HttpCompletionOption.ResponseHeadersRead, token).GetAwaiter().GetResult();
                Volatile.Write(ref inFlight, r);
                if (deadlineFired) r.Dispose();  // fired between SendAsync's return and inFlight's write
                int http = (int)r.StatusCode;
                if (http != 200)
                    throw GrpcTypes.Status(GrpcTypes.FromHttp(http), "HTTP " + http + " (" + r.ReasonPhrase + ") from " + runner.Address +
                                           ", not a gRPC reply");
                Stream body = r.Content.ReadAsStreamAsync().GetAwaiter().GetResult();
                responseBytes = -1;
                int got = ReadFully(body, frame, 0, 5);
                if (got == 5)
                {
                    if (frame[0] != 0)
                        throw GrpcTypes.Status(GrpcTypes.Internal, "compressed response (flag " + frame[0] + ") from " + runner.Address +
                                               ", but no compression was offered");
                    uint len = (uint)(frame[1] << 24 | frame[2] << 16 | frame[3] << 8 | frame[4]);
                    if (len > (uint)runner.MaxMessageBytes)
                        throw GrpcTypes.Status(GrpcTypes.ResourceExhausted, "Received message larger than max (" + len + " vs. " +
                                               runner.MaxMessageBytes + ") from " + runner.Address);
                    if (len > (uint)response.Length)
                        response = new byte[(int)Math.Min((long)runner.MaxMessageBytes, Math.Max((long)len, 2L * response.Length))];
                    if (ReadFully(body, response, 0, (int)len) != (int)len)
                        throw GrpcTypes.Status(GrpcTypes.Internal, "response message truncated by " + runner.Address);
                    responseBytes = (int)len;
                    if (body.Read(probe, 0, 1) != 0)
                        throw GrpcTypes.Status(GrpcTypes.Internal, "more than one response message from " + runner.Address + " on a unary call");
                }
                else if (got != 0)
                    throw GrpcTypes.Status(GrpcTypes.Internal, "response frame header truncated by " + runner.Address);
                CheckStatus(r);
                if (responseBytes < 0)
                    throw GrpcTypes.Status(GrpcTypes.Internal, "no response message from " + runner.Address + " with status OK");
                ServerTiming(r);
            }
            catch (InvalidOperationException e) when (e.Message.StartsWith("gRPC ", StringComparison.Ordinal))
            {
                if (deadlineFired && !e.Message.StartsWith("gRPC DEADLINE_EXCEEDED", StringComparison.Ordinal)) throw DeadlineError(e);
                throw;
            }
            catch (Exception e) when (deadlineFired || (e is OperationCanceledException && token.IsCancellationRequested))
            {
                throw DeadlineError(e);
            }
            catch (HttpRequestException e)
            {
                for (Exception i = e.InnerException; i != null; i = i.InnerException)  // ConnectCallback's own words, without "(localhost:80)"
                    if (i is IOException && i.Message.StartsWith(GrpcRunner.UnixConnectError, StringComparison.Ordinal))
                        throw GrpcTypes.Status(GrpcTypes.Unavailable, "cannot reach " + runner.Address + ": " + i.Message);
                throw GrpcTypes.Status(GrpcTypes.Unavailable, "cannot reach " + runner.Address + ": " + Messages(e));
            }
            catch (IOException e)
            {
                throw GrpcTypes.Status(GrpcTypes.Unavailable, "connection to " + runner.Address + " failed: " + Messages(e));
            }
            catch (ObjectDisposedException e)
            {
                if (runner.IsDisposed) throw new ObjectDisposedException("GrpcRunner");
                throw GrpcTypes.Status(GrpcTypes.Unavailable, "connection to " + runner.Address + " closed: " + Messages(e));
            }
            finally
            {
                if (deadline != null) deadline.CancelAfter(Timeout.Infinite);  // disarm; if it fired meanwhile, the next call replaces it
                Volatile.Write(ref inFlight, null);
                if (r != null) r.Dispose();
                message.Dispose();
            }
        }

        Exception DeadlineError(Exception e)
        {
            return GrpcTypes.Status(GrpcTypes.DeadlineExceeded, "deadline of " + runner.DeadlineS.ToString("R") + " s exceeded calling " +
                                    runner.Address + " (" + e.GetType().Name + ": " + e.Message + ")");
        }

        static string Messages(Exception e)
        {
            var sb = new StringBuilder(e.Message);
            for (Exception i = e.InnerException; i != null; i = i.InnerException)
                if (sb.ToString().IndexOf(i.Message, StringComparison.Ordinal) < 0) sb.Append(" <- ").Append(i.Message);
            return sb.ToString();
        }

        static int ReadFully(Stream s, byte[] buf, int off, int count)
        {
            int done = 0;
            while (done < count)
            {
                int n = s.Read(buf, off + done, count - done);
                if (n == 0) break;
                done += n;
            }
            return done;
        }

        static string Header(HttpHeaders h, string name)
        {
            IEnumerable<string> values;
            if (h == null || !h.TryGetValues(name, out values)) return null;
            var a = values as string[];
            if (a != null) return a.Length > 0 ? a[0] : null;
            foreach (string v in values) return v;
            return null;
        }

        void CheckStatus(HttpResponseMessage r)
        {
            HttpResponseHeaders trailers = runner.TrailingHeaders(r);
            string status = Header(trailers, "grpc-status");
            HttpHeaders from = trailers;
            if (status == null) { status = Header(r.Headers, "grpc-status"); from = r.Headers; }  // Trailers-Only
            if (status == null)
                throw GrpcTypes.Status(GrpcTypes.Unknown, "no grpc-status in the reply from " + runner.Address);
            if (status == "0") return;
            int code;
            if (!int.TryParse(status, out code)) code = GrpcTypes.Unknown;
            string text = Header(from, "grpc-message");
            if (text != null)
            {
                try { text = Uri.UnescapeDataString(text); } catch (Exception) { }  // percent-encoded UTF-8
            }
            throw GrpcTypes.Status(code, text ?? "");
        }

        void ServerTiming(HttpResponseMessage r)
        {
            serverDecode = serverCompute = serverEncode = 0;
            string s = Header(runner.TrailingHeaders(r), "x-server-timing-ns");
            if (s == null) return;
            int pos = 0;
            serverDecode = NextLong(s, ref pos);
            serverCompute = NextLong(s, ref pos);
            serverEncode = NextLong(s, ref pos);
        }

        static long NextLong(string s, ref int pos)
        {
            long v = 0;
            while (pos < s.Length && s[pos] == ' ') pos++;
            while (pos < s.Length && s[pos] >= '0' && s[pos] <= '9') v = v * 10 + (s[pos++] - '0');
            while (pos < s.Length && s[pos] != ',') pos++;
            if (pos < s.Length) pos++;
            return v;
        }

        /// <summary>client_decode: parse the ModelInferResponse in place and copy each raw output into
        /// its .NET array (new strings, shapes and arrays only when they changed since the last call).</summary>
        void Decode()
        {
            Parse(response, responseBytes);
            if (parsedRaws != parsedOutputs)
            {
                for (int i = 0; i < parsedOutputs; i++)
                    if (hasTyped[i])
                        throw GrpcTypes.Status(GrpcTypes.Internal, "the server answered with typed contents, not raw_output_contents");
                throw GrpcTypes.Status(GrpcTypes.Internal, "the response has " + parsedOutputs + " output tensors but " + parsedRaws + " raw contents");
            }
            if (parsedOutputs != nOut) Resize(parsedOutputs);
            byte[] b = response;
            for (int i = 0; i < nOut; i++)
            {
                if (!Same(b, nameOff[i], nameLen[i], outNameBytes[i]))
                {
                    outNameBytes[i] = Slice(b, nameOff[i], nameLen[i]);
                    outNames[i] = Encoding.UTF8.GetString(outNameBytes[i]);
                }
                bool typeChanged = !Same(b, typeOff[i], typeLen[i], outTypeBytes[i]);
                if (typeChanged)
                {
                    byte[] t = Slice(b, typeOff[i], typeLen[i]);
                    string numpy = GrpcTypes.Numpy(Encoding.UTF8.GetString(t));
                    if (numpy == null)
                        throw GrpcTypes.Status(GrpcTypes.Internal, "output '" + outNames[i] + "' has datatype '" + Encoding.UTF8.GetString(t) +
                                               "', which has no .NET array here");
                    outTypeBytes[i] = t;
                    outDtypes[i] = numpy;
                }
                long[] shape = outShapes[i];
                bool shapeChanged = shape == null || shape.Length != shapeRank[i];
                for (int k = 0; !shapeChanged && k < shape.Length; k++) shapeChanged = shape[k] != dims[shapeStart[i] + k];
                if (typeChanged || shapeChanged || outData[i] == null)
                {
                    shape = new long[shapeRank[i]];
                    Array.Copy(dims, shapeStart[i], shape, 0, shape.Length);
                    long count;
                    try { count = GrpcTypes.Count(shape); }
                    catch (ArgumentException e) { throw GrpcTypes.Status(GrpcTypes.Internal, "output '" + outNames[i] + "': " + e.Message); }
                    outShapes[i] = shape;
                    outBytes[i] = count * Dtypes.ItemSize(outDtypes[i]);
                    outData[i] = null;
                    if (outBytes[i] == rawLen[i]) outData[i] = Dtypes.NewArray(outDtypes[i], count);
                }
                if (rawLen[i] != outBytes[i])
                    throw GrpcTypes.Status(GrpcTypes.Internal, "output '" + outNames[i] + "': " + rawLen[i] + " raw bytes for shape [" +
                                           string.Join(", ", outShapes[i]) + "] " + outDtypes[i] + " (expected " + outBytes[i] + ")");
                Buffer.BlockCopy(b, rawOff[i], outData[i], 0, rawLen[i]);
            }
            haveOutputs = true;
        }

        void Resize(int n)
        {
            Array.Resize(ref outNameBytes, n);
            Array.Resize(ref outTypeBytes, n);
            Array.Resize(ref outNames, n);
            Array.Resize(ref outDtypes, n);
            Array.Resize(ref outShapes, n);
            Array.Resize(ref outData, n);
            Array.Resize(ref outBytes, n);
            nOut = n;
        }

        static bool Same(byte[] b, int off, int len, byte[] cached)
        {
            if (cached == null || cached.Length != len) return false;
            for (int k = 0; k < len; k++)
                if (b[off + k] != cached[k]) return false;
            return true;
        }

        static byte[] Slice(byte[] b, int off, int len)
        {
            var s = new byte[len];
            Buffer.BlockCopy(b, off, s, 0, len);
            return s;
        }

        /// <summary>ModelInferResponse: outputs (5) and raw_output_contents (6) located; model_name,
        /// model_version, id, parameters and unknown fields skipped.</summary>
        void Parse(byte[] b, int end)
        {
            parsedOutputs = parsedRaws = dimCount = 0;
            int pos = 0;
            while (pos < end)
            {
                ulong key = GrpcWire.ReadVarint(b, ref pos, end);
                int field = (int)(key >> 3), wire = (int)(key & 7);
                if (field == 5 && wire == GrpcWire.LengthDelimited)
                {
                    int len = GrpcWire.ReadLength(b, ref pos, end);
                    ParseTensor(b, pos, pos + len);
                    pos += len;
                }
                else if (field == 6 && wire == GrpcWire.LengthDelimited)
                {
                    int len = GrpcWire.ReadLength(b, ref pos, end);
                    int k = parsedRaws++;
                    if (k >= rawOff.Length) { Array.Resize(ref rawOff, 2 * k); Array.Resize(ref rawLen, 2 * k); }
                    rawOff[k] = pos;
                    rawLen[k] = len;
                    pos += len;
                }
                else GrpcWire.Skip(b, ref pos, end, wire);
            }
        }

        /// <summary>InferOutputTensor: name (1), datatype (2), shape (3, packed or not); parameters (4)
        /// skipped; contents (5) noted (typed contents are not this raw-bytes client's).</summary>
        void ParseTensor(byte[] b, int pos, int end)
        {
            int k = parsedOutputs++;
            if (k >= nameOff.Length)
            {
                int n = 2 * k;
                Array.Resize(ref nameOff, n); Array.Resize(ref nameLen, n); Array.Resize(ref typeOff, n); Array.Resize(ref typeLen, n);
                Array.Resize(ref shapeStart, n); Array.Resize(ref shapeRank, n); Array.Resize(ref hasTyped, n);
            }
            nameOff[k] = typeOff[k] = pos;
            nameLen[k] = typeLen[k] = 0;
            shapeStart[k] = dimCount;
            shapeRank[k] = 0;
            hasTyped[k] = false;
            while (pos < end)
            {
                ulong key = GrpcWire.ReadVarint(b, ref pos, end);
                int field = (int)(key >> 3), wire = (int)(key & 7);
                if (field == 1 && wire == GrpcWire.LengthDelimited)
                {
                    nameLen[k] = GrpcWire.ReadLength(b, ref pos, end);
                    nameOff[k] = pos;
                    pos += nameLen[k];
                }
                else if (field == 2 && wire == GrpcWire.LengthDelimited)
                {
                    typeLen[k] = GrpcWire.ReadLength(b, ref pos, end);
                    typeOff[k] = pos;
                    pos += typeLen[k];
                }
                else if (field == 3 && wire == GrpcWire.LengthDelimited)  // packed
                {
                    int len = GrpcWire.ReadLength(b, ref pos, end);
                    int stop = pos + len;
                    while (pos < stop) AddDim(k, (long)GrpcWire.ReadVarint(b, ref pos, stop));
                }
                else if (field == 3 && wire == GrpcWire.Varint)  // unpacked: one element per field
                    AddDim(k, (long)GrpcWire.ReadVarint(b, ref pos, end));
                else
                {
                    if (field == 5) hasTyped[k] = true;
                    GrpcWire.Skip(b, ref pos, end, wire);
                }
            }
            if (pos != end) throw GrpcWire.Malformed("output tensor overruns its length");
        }

        void AddDim(int k, long d)
        {
            if (dimCount == dims.Length) Array.Resize(ref dims, 2 * dims.Length);
            dims[dimCount++] = d;
            shapeRank[k]++;
        }

        void CheckUsable()
        {
            if (runner.IsDisposed) throw new ObjectDisposedException("GrpcRunner");
        }

        // ---- the public face ----

        /// <summary>One ModelInfer, as the application makes it.</summary>
        public void CallOnce()
        {
            CheckUsable();
            Encode();
            Exchange();
            Decode();
        }

        /// <summary>n calls back to back, timed here by Stopwatch. Returns 7n values in ns, per call i at
        /// [7i..7i+6]: total, client_encode, transport (request sent to response read and status known,
        /// minus the server's three phases), server_decode, server_compute, server_encode (the server's
        /// x-server-timing-ns trailer), client_decode.</summary>
        public long[] TimeCalls(int n)
        {
            if (n < 0) throw new ArgumentException("n must be >= 0");
            CheckUsable();
            var ns = new long[7 * n];
            long freq = Stopwatch.Frequency;
            for (int i = 0; i < n; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                Encode();
                long t1 = Stopwatch.GetTimestamp();
                Exchange();
                long t2 = Stopwatch.GetTimestamp();
                Decode();
                long t3 = Stopwatch.GetTimestamp();
                long encode = (t1 - t0) * 1000000000L / freq, exchange = (t2 - t1) * 1000000000L / freq, decode = (t3 - t2) * 1000000000L / freq;
                int j = 7 * i;
                ns[j] = (t3 - t0) * 1000000000L / freq;  // the phases add up to it within a few ns of rounding
                ns[j + 1] = encode;
                ns[j + 2] = Math.Max(0, exchange - serverDecode - serverCompute - serverEncode);
                ns[j + 3] = serverDecode;
                ns[j + 4] = serverCompute;
                ns[j + 5] = serverEncode;
                ns[j + 6] = decode;
            }
            return ns;
        }

        public int OutputCount { get { return nOut; } }

        void CheckOutput(int i)
        {
            if (!haveOutputs) throw new InvalidOperationException("no call has completed yet: call CallOnce or TimeCalls first");
            if (i < 0 || i >= nOut) throw new ArgumentOutOfRangeException("i", "output index " + i + " of " + nOut);
        }

        /// <summary>The name the server gave output i in the last response.</summary>
        public string OutputName(int i) { CheckOutput(i); return outNames[i]; }

        /// <summary>NumPy's name of the last call's output i.</summary>
        public string OutputDType(int i) { CheckOutput(i); return outDtypes[i]; }

        public long[] OutputShape(int i) { CheckOutput(i); return (long[])outShapes[i].Clone(); }

        /// <summary>memcpy the last call's output i (a .NET array) to native memory at `address`.</summary>
        public unsafe void CopyOutput(int i, long address)
        {
            CheckOutput(i);
            long bytes = outBytes[i];
            if (bytes == 0) return;
            if (address == 0) throw new ArgumentException("address is NULL");
            GCHandle h = GCHandle.Alloc(outData[i], GCHandleType.Pinned);
            try { Buffer.MemoryCopy((void*)h.AddrOfPinnedObject(), (void*)new IntPtr(address), bytes, bytes); }
            finally { h.Free(); }
        }
    }
}
