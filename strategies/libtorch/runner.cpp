// C++ side of the LibTorch strategies: runs a TorchScript module (torch::jit::load) or an
// AOTInductor package (AOTIModelPackageLoader) on NumPy arrays without copying them.
//
// In:  each C-contiguous NumPy array is wrapped by torch::from_blob (the model reads the caller's
//      buffer; last_input_ptrs() reports what reached it).
// Out: each output tensor becomes a NumPy array over the tensor's own memory, kept alive by a
//      capsule that owns the tensor; an output that aliases an input keeps that input alive instead.
// The GIL is released and c10::InferenceMode is on during compute; marshal in, compute and
// marshal out are timed here with a steady clock. C++ exceptions reach Python as RuntimeError.
#include <torch/extension.h>
#include <pybind11/numpy.h>
#include <torch/script.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;
using Clock = std::chrono::steady_clock;

namespace {

at::ScalarType scalar_type(const py::dtype& dt) {
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (kind == 'f' && size == 4) return at::kFloat;
  if (kind == 'f' && size == 8) return at::kDouble;
  if (kind == 'f' && size == 2) return at::kHalf;
  if (kind == 'i' && size == 8) return at::kLong;
  if (kind == 'i' && size == 4) return at::kInt;
  if (kind == 'i' && size == 2) return at::kShort;
  if (kind == 'i' && size == 1) return at::kChar;
  if (kind == 'u' && size == 1) return at::kByte;
  if (kind == 'b') return at::kBool;
  throw std::invalid_argument("unsupported NumPy dtype kind '" + std::string(1, kind) + "' size " + std::to_string(size));
}

py::dtype numpy_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return py::dtype("float32");
    case at::kDouble: return py::dtype("float64");
    case at::kHalf: return py::dtype("float16");
    case at::kLong: return py::dtype("int64");
    case at::kInt: return py::dtype("int32");
    case at::kShort: return py::dtype("int16");
    case at::kChar: return py::dtype("int8");
    case at::kByte: return py::dtype("uint8");
    case at::kBool: return py::dtype("bool");
    default: throw std::invalid_argument(std::string("output dtype ") + c10::toString(t) + " has no NumPy equivalent");
  }
}

void flatten(const c10::IValue& v, std::vector<at::Tensor>& out) {
  if (v.isTensor()) {
    out.push_back(v.toTensor());
  } else if (v.isTuple()) {
    for (const auto& e : v.toTupleRef().elements()) flatten(e, out);
  } else if (v.isList()) {
    for (const auto& e : v.toListRef()) flatten(e, out);
  } else if (v.isGenericDict()) {
    for (const auto& kv : v.toGenericDict()) flatten(kv.value(), out);  // insertion order
  } else {
    throw std::runtime_error("model returned " + v.tagKind() + "; expected tensors");
  }
}

int64_t ns(Clock::duration d) { return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count(); }

class Runner {
 public:
  Runner(const std::string& kind, const std::string& path, int threads, int runners) {
    at::set_num_threads(threads);
    if (kind == "ts") {
      module_ = std::make_unique<torch::jit::Module>(torch::jit::load(path));
      module_->eval();
    } else if (kind == "aoti") {
      aoti_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model", false, std::max(runners, 1));
    } else {
      throw std::invalid_argument("kind must be 'ts' or 'aoti', got '" + kind + "'");
    }
  }

  py::tuple run(const py::list& arrays) {
    const auto t0 = Clock::now();
    std::vector<at::Tensor> inputs;
    std::vector<py::array> keep;  // the input arrays, for outputs that alias them
    inputs.reserve(arrays.size());
    for (size_t i = 0; i < arrays.size(); ++i) {
      auto a = py::reinterpret_borrow<py::array>(arrays[i]);
      if (!(a.flags() & py::array::c_style)) throw std::invalid_argument("input " + std::to_string(i) + " is not C-contiguous");
      std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
      inputs.push_back(torch::from_blob(const_cast<void*>(a.data()), shape, at::TensorOptions().dtype(scalar_type(a.dtype()))));
      keep.push_back(a);
    }
    last_inputs_.clear();
    for (const auto& t : inputs) last_inputs_.push_back(reinterpret_cast<intptr_t>(t.data_ptr()));
    const auto t1 = Clock::now();
    std::vector<at::Tensor> outputs;
    {
      py::gil_scoped_release no_gil;
      c10::InferenceMode guard;
      if (module_) {
        std::vector<c10::IValue> args(inputs.begin(), inputs.end());
        flatten(module_->forward(args), outputs);
      } else {
        outputs = aoti_->run(inputs);
      }
    }
    const auto t2 = Clock::now();
    py::list result;
    last_outputs_.clear();
    for (auto& t : outputs) {
      at::Tensor c = t.contiguous();  // no copy when already contiguous
      std::vector<py::ssize_t> shape(c.sizes().begin(), c.sizes().end());
      std::vector<py::ssize_t> strides;
      for (auto s : c.strides()) strides.push_back(s * c.element_size());
      py::object owner;
      for (size_t i = 0; i < inputs.size(); ++i) {  // aliases an input: that array owns the memory
        const auto* base = static_cast<const char*>(inputs[i].data_ptr());
        const auto* p = static_cast<const char*>(c.data_ptr());
        if (p >= base && p < base + inputs[i].nbytes()) owner = keep[i];
      }
      if (!owner) owner = py::capsule(new at::Tensor(c), [](void* p) { delete static_cast<at::Tensor*>(p); });
      last_outputs_.push_back(reinterpret_cast<intptr_t>(c.data_ptr()));
      result.append(py::array(numpy_dtype(c.scalar_type()), shape, strides, c.data_ptr(), owner));
    }
    const auto t3 = Clock::now();
    return py::make_tuple(result, py::make_tuple(ns(t1 - t0), ns(t2 - t1), ns(t3 - t2)));
  }

  std::vector<intptr_t> last_input_ptrs() const { return last_inputs_; }
  std::vector<intptr_t> last_output_ptrs() const { return last_outputs_; }

 private:
  std::unique_ptr<torch::jit::Module> module_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> aoti_;
  std::vector<intptr_t> last_inputs_, last_outputs_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<Runner>(m, "Runner")
      .def(py::init<const std::string&, const std::string&, int, int>(), py::arg("kind"), py::arg("path"),
           py::arg("threads"), py::arg("runners") = 1)
      .def("run", &Runner::run, "run on a list of C-contiguous arrays; returns (outputs, (in_ns, compute_ns, out_ns))")
      .def("last_input_ptrs", &Runner::last_input_ptrs, "data pointers of the tensors the model received")
      .def("last_output_ptrs", &Runner::last_output_ptrs, "data pointers of the output tensors");
}
