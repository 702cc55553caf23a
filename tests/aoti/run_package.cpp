// Runs an AOTInductor package (.pt2) that calls mhsa ops, from C++ without Python:
//   run_package MODEL.pt2 OUT.pt IN0.pt [IN1.pt ...]
// Inputs are tensors saved from Python with torch.save; the outputs are written with
// torch::pickle_save as a tuple of tensors (torch.load reads it). tests/python/test_export.py
// builds and runs it.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

// Defined in libmhsa.so (what <mhsa/mhsa.h> references for its users): calling it keeps the
// library linked, so its op registrations run before the package's calls to mhsa ops resolve.
extern "C" int64_t mhsa_library_anchor();

namespace {

std::vector<char> read_file(const char* path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "cannot open ", path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: run_package MODEL.pt2 OUT.pt IN0.pt [IN1.pt ...]\n";
    return 2;
  }
  mhsa_library_anchor();
  try {
    std::vector<at::Tensor> inputs;
    for (int i = 3; i < argc; ++i)
      inputs.push_back(torch::pickle_load(read_file(argv[i])).toTensor());
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    std::vector<at::Tensor> outputs = loader.run(inputs);
    // A tuple pickles as a plain tuple, which torch.load(weights_only=True) accepts.
    const std::vector<c10::IValue> values(outputs.begin(), outputs.end());
    const std::vector<char> bytes = torch::pickle_save(c10::ivalue::Tuple::create(values));
    std::ofstream(argv[2], std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  } catch (const std::exception& e) {
    std::cerr << "run_package: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
