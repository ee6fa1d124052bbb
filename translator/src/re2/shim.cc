// The one RE2 call the translator needs, behind a C ABI.
//
// RE2 is a C++ library; Rust can only call it through C functions, and
// no maintained Rust binding builds against a system RE2 and exposes
// RE2::ProgramSize(), which is what Envoy limits. So this file compiles the
// pattern with the options Envoy uses and reports either the program size or
// RE2's error, and nothing else.
//
// Options, as Envoy 1.40 compiles route regexes (checked against the pinned
// Envoy by translator/tests/re2_envoy.rs): errors not logged, RE2's default
// max_mem (8 MiB), and Latin-1 encoding: Envoy 1.40 rejects \x{100} and
// reports the Latin-1 program sizes (`.` is 6 instructions, not UTF-8's 12).

#include <re2/re2.h>

#include <cstddef>
#include <cstring>
#include <exception>
#include <string>

namespace {

// Copies `message` into `out` (capacity `cap`, at least 1), NUL-terminated
// and cut to fit.
void copy_message(const std::string& message, char* out, std::size_t cap) {
  if (out == nullptr || cap == 0) {
    return;
  }
  std::size_t n = message.size() < cap - 1 ? message.size() : cap - 1;
  std::memcpy(out, message.data(), n);
  out[n] = '\0';
}

}  // namespace

// Compiles `pattern` (`len` bytes, not NUL-terminated). Returns its program
// size (>= 0), or -1 with RE2's error message in `error`. Never throws: an
// exception (only std::bad_alloc is possible) must not unwind into Rust.
extern "C" long gatewright_re2_program_size(const char* pattern, std::size_t len,
                                            char* error, std::size_t error_cap) {
  try {
    RE2::Options options;
    options.set_log_errors(false);
    options.set_encoding(RE2::Options::EncodingLatin1);
    RE2 re(re2::StringPiece(pattern, len), options);
    if (!re.ok()) {
      copy_message(re.error(), error, error_cap);
      return -1;
    }
    return static_cast<long>(re.ProgramSize());
  } catch (const std::exception& e) {
    copy_message(std::string("RE2 failed: ") + e.what(), error, error_cap);
    return -1;
  } catch (...) {
    copy_message("RE2 failed", error, error_cap);
    return -1;
  }
}
