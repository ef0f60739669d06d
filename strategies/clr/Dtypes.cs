// NumPy dtypes and the .NET arrays that hold them, shared by every clr-* route's C# (one assembly).

using System;

namespace InteropBench
{
    /// <summary>A NumPy dtype's item size and a new .NET array for it; float16 is kept as raw ushort bits
    /// (no System.Half on Mono's .NET 4.x profile).</summary>
    static class Dtypes
    {
        public static int ItemSize(string dtype)
        {
            switch (dtype)
            {
                case "float64": case "int64": case "uint64": return 8;
                case "float32": case "int32": case "uint32": return 4;
                case "float16": case "int16": case "uint16": return 2;
                case "int8": case "uint8": case "bool": return 1;
                default: throw new NotSupportedException("dtype " + dtype + " has no .NET array type here");
            }
        }

        public static Array NewArray(string dtype, long count)
        {
            switch (dtype)
            {
                case "float32": return new float[count];
                case "float64": return new double[count];
                case "float16": return new ushort[count];
                case "int64": return new long[count];
                case "int32": return new int[count];
                case "int16": return new short[count];
                case "int8": return new sbyte[count];
                case "uint64": return new ulong[count];
                case "uint32": return new uint[count];
                case "uint16": return new ushort[count];
                case "uint8": return new byte[count];
                case "bool": return new bool[count];
                default: throw new NotSupportedException("dtype " + dtype + " has no .NET array type here");
            }
        }
    }
}
