// C++ caller of ONNX Runtime (its C++ API over the C library that the onnxruntime wheel ships),
// exposed to the harness as a small pybind11 module.
//
// In:   each C-contiguous NumPy array is wrapped as an Ort::Value over the caller's buffer (no copy).
// Out:  each output Ort::Value is moved to the heap and a NumPy array views its memory, kept alive
//       by a capsule that owns it (no copy).
// Time: run() times wrap / Run / unwrap with a steady clock for the harness's single calls.
//       time_calls() and closed_loop() are the C++ application itself: the loop, the clock and the
//       caller threads are C++, the GIL is released, and "unwrap" is what a C++ caller does with an
//       output (read its shape and data pointer).
// Errors: Ort::Exception (ORT's status message) and argument errors reach Python as exceptions.
#define ORT_API_MANUAL_INIT  // Ort::InitApi() once the library is known to serve the headers' API version
#include <onnxruntime_cxx_api.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;
using Clock = std::chrono::steady_clock;

namespace {

int64_t ns(Clock::duration d) { return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count(); }

ONNXTensorElementDataType ort_type(const py::dtype& dt) {
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (kind == 'f' && size == 4) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  if (kind == 'f' && size == 8) return ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
  if (kind == 'f' && size == 2) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  if (kind == 'i' && size == 8) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  if (kind == 'i' && size == 4) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  if (kind == 'i' && size == 2) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16;
  if (kind == 'i' && size == 1) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  if (kind == 'u' && size == 1) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  if (kind == 'b') return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
  throw std::invalid_argument("unsupported NumPy dtype kind '" + std::string(1, kind) + "' size " + std::to_string(size));
}

py::dtype numpy_dtype(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return py::dtype("float32");
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return py::dtype("float64");
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return py::dtype("float16");
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return py::dtype("int64");
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return py::dtype("int32");
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return py::dtype("int16");
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return py::dtype("int8");
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return py::dtype("uint8");
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return py::dtype("bool");
    default: throw std::invalid_argument("output element type " + std::to_string(static_cast<int>(t)) + " has no NumPy equivalent");
  }
}

// One input as the C++ side holds it: a borrowed buffer with its shape and element type.
struct Input {
  void* data;
  size_t bytes;
  std::vector<int64_t> shape;
  ONNXTensorElementDataType type;
};

class Runner {
 public:
  Runner(const std::string& path, int intra_threads, bool spinning, int level, std::vector<std::string> inputs,
         std::vector<std::string> outputs)
      : env_(ORT_LOGGING_LEVEL_WARNING, "cpp-onnxruntime"),
        mem_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)),
        input_names_(std::move(inputs)),
        output_names_(std::move(outputs)) {
    Ort::SessionOptions so;
    so.SetIntraOpNumThreads(intra_threads);
    so.SetInterOpNumThreads(1);
    so.SetExecutionMode(ORT_SEQUENTIAL);
    so.SetGraphOptimizationLevel(static_cast<GraphOptimizationLevel>(level));  // the level chosen at prepare time
    if (!spinning) so.AddConfigEntry("session.intra_op.allow_spinning", "0");
    session_ = std::make_unique<Ort::Session>(env_, path.c_str(), so);
    if (session_->GetInputCount() != input_names_.size())
      throw std::invalid_argument("the ONNX file has " + std::to_string(session_->GetInputCount()) + " inputs, the spec names " +
                                  std::to_string(input_names_.size()));
    for (auto& n : input_names_) in_ptrs_.push_back(n.c_str());
    for (auto& n : output_names_) out_ptrs_.push_back(n.c_str());
  }

  // Borrow the NumPy arrays' buffers (the caller keeps them alive for the call).
  std::vector<Input> borrow(const std::vector<py::array>& arrays) const {
    if (arrays.size() != input_names_.size())
      throw std::invalid_argument("got " + std::to_string(arrays.size()) + " inputs, expected " + std::to_string(input_names_.size()));
    std::vector<Input> out;
    out.reserve(arrays.size());
    for (size_t i = 0; i < arrays.size(); ++i) {
      const auto& a = arrays[i];
      if (!(a.flags() & py::array::c_style))
        throw std::invalid_argument("input '" + input_names_[i] + "' is not C-contiguous");
      std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
      out.push_back(Input{const_cast<void*>(a.data()), static_cast<size_t>(a.nbytes()), std::move(shape), ort_type(a.dtype())});
    }
    return out;
  }

  // Wrap without copying: each Ort::Value points at the caller's buffer.
  std::vector<Ort::Value> wrap(const std::vector<Input>& inputs) const {
    std::vector<Ort::Value> values;
    values.reserve(inputs.size());
    for (const auto& in : inputs)
      values.push_back(Ort::Value::CreateTensor(mem_, in.data, in.bytes, in.shape.data(), in.shape.size(), in.type));
    return values;
  }

  std::vector<Ort::Value> call(const std::vector<Ort::Value>& values) const {
    return session_->Run(run_opts_, in_ptrs_.data(), values.data(), values.size(), out_ptrs_.data(), out_ptrs_.size());
  }

  // One call for the harness: outputs become NumPy arrays over ORT's memory.
  py::tuple run(const std::vector<py::array>& arrays) {
    auto inputs = borrow(arrays);
    std::vector<Ort::Value> outs;
    std::vector<uintptr_t> input_ptrs;
    int64_t t_wrap, t_run;
    {
      py::gil_scoped_release release;  // nothing shared is written here: concurrent callers are safe
      const auto t0 = Clock::now();
      auto values = wrap(inputs);
      const auto t1 = Clock::now();
      outs = call(values);
      const auto t2 = Clock::now();
      t_wrap = ns(t1 - t0);
      t_run = ns(t2 - t1);
      for (auto& v : values) input_ptrs.push_back(reinterpret_cast<uintptr_t>(v.GetTensorRawData()));
    }
    const auto t2 = Clock::now();
    last_input_ptrs_ = std::move(input_ptrs);  // the GIL is held again
    py::list result;
    last_output_ptrs_.clear();
    for (auto& o : outs) {
      auto info = o.GetTensorTypeAndShapeInfo();
      auto shape = info.GetShape();
      auto dtype = numpy_dtype(info.GetElementType());
      void* data = o.GetTensorMutableRawData();
      auto* owner = new Ort::Value(std::move(o));
      py::capsule keep(owner, [](void* p) { delete static_cast<Ort::Value*>(p); });
      std::vector<py::ssize_t> dims(shape.begin(), shape.end());
      result.append(py::array(dtype, dims, data, keep));
      last_output_ptrs_.push_back(reinterpret_cast<uintptr_t>(data));
    }
    const int64_t t_unwrap = ns(Clock::now() - t2);
    return py::make_tuple(result, py::make_tuple(t_wrap, t_run, t_unwrap));
  }

  // What a C++ caller does with an output: read its shape and address (the bytes stay in ORT's buffer).
  static size_t unwrap(std::vector<Ort::Value>& outs) {
    size_t elements = 0;
    for (auto& o : outs) {
      auto info = o.GetTensorTypeAndShapeInfo();
      elements += info.GetElementCount() + (o.GetTensorMutableRawData() != nullptr);
    }
    return elements;
  }

  // n calls timed in C++ without the GIL: latency and the three phases in ns.
  py::tuple time_calls(const std::vector<py::array>& arrays, int64_t n) {
    if (n < 0) throw std::invalid_argument("n must be >= 0");
    auto inputs = borrow(arrays);
    py::array_t<int64_t> lat(n), wrap_ns(n), run_ns(n), unwrap_ns(n);
    auto L = lat.mutable_unchecked<1>();
    auto W = wrap_ns.mutable_unchecked<1>();
    auto R = run_ns.mutable_unchecked<1>();
    auto U = unwrap_ns.mutable_unchecked<1>();
    size_t sink = 0;
    {
      py::gil_scoped_release release;
      for (int64_t i = 0; i < n; ++i) {
        const auto t0 = Clock::now();
        auto values = wrap(inputs);
        const auto t1 = Clock::now();
        auto outs = call(values);
        const auto t2 = Clock::now();
        sink += unwrap(outs);
        const auto t3 = Clock::now();
        outs.clear();  // releasing the outputs is part of the caller's call
        const auto t4 = Clock::now();
        W(i) = ns(t1 - t0);
        R(i) = ns(t2 - t1);
        U(i) = ns(t4 - t2);
        L(i) = ns(t4 - t0);
        (void)t3;
      }
    }
    sink_ += sink;  // the GIL is held again
    return py::make_tuple(lat, py::make_tuple(wrap_ns, run_ns, unwrap_ns));
  }

  // `callers` C++ threads calling back to back (perf_analyzer's concurrency mode): all warm up for
  // warmup_s, then every call that completes within duration_s counts. Returns (latencies, wall s,
  // first error or "").
  py::tuple closed_loop(const std::vector<py::array>& arrays, int callers, double duration_s, double warmup_s) {
    if (callers < 1) throw std::invalid_argument("callers must be >= 1");
    auto inputs = borrow(arrays);
    std::vector<std::vector<int64_t>> per_thread(callers);
    std::atomic<bool> measuring{false}, stop{false};
    std::string error;
    std::mutex error_mu;
    double wall = 0;
    {
      py::gil_scoped_release release;
      std::vector<std::thread> threads;
      auto join_all = [&] {
        stop = true;
        for (auto& t : threads)
          if (t.joinable()) t.join();
      };
      try {
        for (int c = 0; c < callers; ++c) {
          threads.emplace_back([&, c] {
            auto& out = per_thread[c];
            out.reserve(1 << 14);
            try {
              while (!stop.load(std::memory_order_relaxed)) {
                const auto t0 = Clock::now();
                auto values = wrap(inputs);
                auto outs = call(values);
                unwrap(outs);
                outs.clear();
                const int64_t dt = ns(Clock::now() - t0);
                if (measuring.load(std::memory_order_relaxed)) out.push_back(dt);
              }
            } catch (const std::exception& e) {
              std::lock_guard<std::mutex> lock(error_mu);
              if (error.empty()) error = e.what();
              stop = true;
            }
          });
        }
      } catch (...) {  // a thread that could not start: stop and join the ones that did, then report
        join_all();
        throw;
      }
      std::this_thread::sleep_for(std::chrono::duration<double>(warmup_s));
      const auto t0 = Clock::now();
      measuring = true;
      while (!stop && std::chrono::duration<double>(Clock::now() - t0).count() < duration_s)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      measuring = false;
      wall = std::chrono::duration<double>(Clock::now() - t0).count();
      join_all();
    }
    size_t total = 0;
    for (auto& v : per_thread) total += v.size();
    py::array_t<int64_t> lat(static_cast<py::ssize_t>(total));
    auto L = lat.mutable_unchecked<1>();
    size_t k = 0;
    for (auto& v : per_thread)
      for (auto x : v) L(k++) = x;
    return py::make_tuple(lat, wall, error);
  }

  // Open loop: request i arrives offsets[i] ns after the start whatever the callers are doing; each
  // caller takes the next request in schedule order, sleeps until its time, calls, and records when it
  // sent it and when it was done (ns from the start; -1: never). With budget_ns > 0 the load stops once
  // more than max_over requests after the warm-up took over budget_ns from their arrival; with
  // deadline_ns > 0 no request is sent after it.
  py::tuple open_loop(const std::vector<py::array>& arrays, int callers,
                      py::array_t<int64_t, py::array::c_style | py::array::forcecast> offsets, int64_t warmup_n,
                      int64_t budget_ns, int64_t max_over, int64_t deadline_ns) {
    if (callers < 1) throw std::invalid_argument("callers must be >= 1");
    auto inputs = borrow(arrays);
    auto O = offsets.unchecked<1>();
    const size_t total = static_cast<size_t>(O.shape(0));
    std::vector<int64_t> off(total), send(total, -1), done(total, -1);
    for (size_t i = 0; i < total; ++i) off[i] = O(static_cast<py::ssize_t>(i));
    std::atomic<size_t> next{0};
    std::atomic<int64_t> over{0};
    std::atomic<bool> stop{false}, early{false};
    std::string error;
    std::mutex error_mu;
    {
      py::gil_scoped_release release;
      const auto start = Clock::now() + std::chrono::milliseconds(20);
      std::vector<std::thread> threads;
      auto join_all = [&] {
        for (auto& t : threads)
          if (t.joinable()) t.join();
      };
      try {
        for (int c = 0; c < callers; ++c) {
          threads.emplace_back([&] {
            try {
              while (!stop.load(std::memory_order_relaxed)) {
                const size_t i = next.fetch_add(1);
                if (i >= total) break;
                if (deadline_ns > 0 && ns(Clock::now() - start) > deadline_ns) {
                  early = true;  // overloaded past the grace: the rest are never served
                  stop = true;
                  break;
                }
                const auto due = start + std::chrono::nanoseconds(off[i]);
                std::this_thread::sleep_until(due);
                const auto s = Clock::now();
                auto values = wrap(inputs);
                auto outs = call(values);
                unwrap(outs);
                outs.clear();
                const auto e = Clock::now();
                send[i] = ns(s - start);
                done[i] = ns(e - start);
                if (budget_ns > 0 && static_cast<int64_t>(i) >= warmup_n && ns(e - due) > budget_ns &&
                    over.fetch_add(1) + 1 > max_over) {
                  early = true;
                  stop = true;
                }
              }
            } catch (const std::exception& e) {
              std::lock_guard<std::mutex> lock(error_mu);
              if (error.empty()) error = e.what();
              stop = true;
            }
          });
        }
      } catch (...) {
        stop = true;
        join_all();
        throw;
      }
      join_all();
    }
    py::array_t<int64_t> S(static_cast<py::ssize_t>(total)), D(static_cast<py::ssize_t>(total));
    std::copy(send.begin(), send.end(), S.mutable_data());
    std::copy(done.begin(), done.end(), D.mutable_data());
    return py::make_tuple(S, D, error, early.load() && error.empty());
  }

  std::vector<uintptr_t> last_input_ptrs() const { return last_input_ptrs_; }
  std::vector<uintptr_t> last_output_ptrs() const { return last_output_ptrs_; }
  std::vector<std::string> model_inputs() const {
    std::vector<std::string> names;
    Ort::AllocatorWithDefaultOptions alloc;
    for (size_t i = 0; i < session_->GetInputCount(); ++i) names.push_back(session_->GetInputNameAllocated(i, alloc).get());
    return names;
  }

 private:
  Ort::Env env_;
  Ort::MemoryInfo mem_;
  Ort::RunOptions run_opts_;
  std::unique_ptr<Ort::Session> session_;
  std::vector<std::string> input_names_, output_names_;
  std::vector<const char*> in_ptrs_, out_ptrs_;
  std::vector<uintptr_t> last_input_ptrs_, last_output_ptrs_;
  size_t sink_ = 0;
};

}  // namespace

PYBIND11_MODULE(ORT_RUNNER_MODULE, m) {
  if (OrtGetApiBase()->GetApi(ORT_API_VERSION) == nullptr)
    throw std::runtime_error("libonnxruntime " + std::string(OrtGetApiBase()->GetVersionString()) +
                             " is older than the headers' API version " + std::to_string(ORT_API_VERSION) +
                             " (pip install 'onnxruntime>=1.29')");
  Ort::InitApi();
  m.doc() = "ONNX Runtime called from C++ (the C++ API over the wheel's libonnxruntime)";
  m.def("api_version", [] { return ORT_API_VERSION; }, "ORT_API_VERSION of the headers this was built against");
  m.def("runtime_version", [] { return std::string(Ort::GetVersionString()); }, "version of the loaded libonnxruntime");
  py::class_<Runner>(m, "Runner")
      .def(py::init<const std::string&, int, bool, int, std::vector<std::string>, std::vector<std::string>>(), py::arg("path"),
           py::arg("intra_threads"), py::arg("spinning"), py::arg("level"), py::arg("inputs"), py::arg("outputs"))
      .def("run", &Runner::run)
      .def("time_calls", &Runner::time_calls)
      .def("closed_loop", &Runner::closed_loop)
      .def("open_loop", &Runner::open_loop)
      .def("last_input_ptrs", &Runner::last_input_ptrs)
      .def("last_output_ptrs", &Runner::last_output_ptrs)
      .def("model_inputs", &Runner::model_inputs);
}
