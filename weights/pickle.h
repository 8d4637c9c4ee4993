// A pickle virtual machine for what torch.save writes: every opcode of protocols 0-5 except
// the extension registry (EXT*), out-of-band buffers (NEXT_BUFFER, READONLY_BUFFER) and text
// persistent ids (PERSID), producing a small object model.
//
// Nothing is ever imported or called: globals stay names, and calls of unknown classes
// (RecBole's Config, torch.device, enums, ...) become opaque Objects that keep their
// class, arguments and state. A few callables are understood because checkpoints are made
// of them:
//   collections.OrderedDict(...)                       -> Dict (ordered, like every Dict)
//   torch._utils._rebuild_tensor(_v2)(storage, ...)    -> Tensor
//   torch._utils._rebuild_parameter(_with_state)(t, ...) -> that Tensor
//   torch._tensor._rebuild_from_type(_v2)(f, type, args, ...) -> f(*args)
//   builtins.set / frozenset (iterable)                -> Set
//   builtins.getattr(global, "NAME")                   -> Global module.(name.NAME)
//       (how Python >= 3.11 pickles enum members)
//   _codecs.encode(text, "latin1"), builtins.bytes/bytearray -> Bytes (protocol 2 bytes)
// Persistent ids ('storage', torch.<Type>Storage, key, location, numel) become Storages.
//
// Hostile input cannot crash, hang or exhaust memory: lengths are checked against the
// remaining input, and the stack, the memo, the number of objects and the tensor rank are
// capped (Limits). Every failure is a seqrec::Error naming the source, the opcode and its
// offset, and expected vs. found.
//
// Ownership: load() returns the root Value, which owns every object of the pickle in one
// arena; all other Values are reached through it by reference or pointer and stay valid as
// long as the root lives. Values may share children (the memo) and may even form cycles
// (Python allows a list to contain itself); no accessor and no destructor recurses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace seqrec::pickle {

// Element types of torch storages.
enum class DType : uint8_t { F32, F64, F16, BF16, I64, I32, I16, I8, U8, Bool };
std::size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // "float32", "bfloat16", ... (torch's names)

// A persistent id ('storage', torch.FloatStorage, key, location, numel).
struct StorageRef {
  std::string key;       // the entry <prefix>/data/<key>
  DType dtype = DType::F32;
  int64_t numel = 0;     // elements, not bytes
  std::string location;  // "cpu", "cuda:0", ...
};

// A tensor as torch._utils._rebuild_tensor_v2 describes it: a strided view of a storage.
// offset, size and stride count elements; they are NOT yet checked against the storage
// (TorchCheckpoint does that when it reads the data), only for being >= 0.
struct TensorRef {
  StorageRef storage;
  int64_t offset = 0;
  std::vector<int64_t> size;
  std::vector<int64_t> stride;
  bool requires_grad = false;
};

enum class Kind : uint8_t {
  None, Bool, Int, BigInt, Float, String, Bytes,
  List, Tuple, Set, Dict,
  Global,   // a class or function named by module and name
  Object,   // the result of calling / instantiating a Global we do not interpret
  Storage,  // a persistent id for a storage
  Tensor,
};
const char* kind_name(Kind kind);

// Resource limits for one load(). The defaults fit any real checkpoint pickle (which has
// thousands of objects, not millions) and bound memory to a few hundred MB on hostile input.
struct Limits {
  std::size_t max_objects = std::size_t{1} << 21;
  std::size_t max_stack = std::size_t{1} << 20;  // values on the stack, marks included
  std::size_t max_memo = std::size_t{1} << 20;
  std::size_t max_tensor_rank = 64;
  std::size_t max_call_depth = 8;  // _rebuild_from_type_v2(f, ...) calling f, ...
};

class Value {
 public:
  struct Item {
    const Value* key;
    const Value* value;
  };

  Value();  // None
  Value(Value&&) noexcept;
  Value& operator=(Value&&) noexcept;
  Value(const Value&) = delete;  // children live in the root's arena; pass references
  Value& operator=(const Value&) = delete;
  ~Value();

  Kind kind() const { return kind_; }
  const char* kind_name() const { return pickle::kind_name(kind_); }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int; }
  bool is_float() const { return kind_ == Kind::Float; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_bytes() const { return kind_ == Kind::Bytes; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_tuple() const { return kind_ == Kind::Tuple; }
  bool is_dict() const { return kind_ == Kind::Dict; }
  bool is_global() const { return kind_ == Kind::Global; }
  bool is_object() const { return kind_ == Kind::Object; }
  bool is_storage() const { return kind_ == Kind::Storage; }
  bool is_tensor() const { return kind_ == Kind::Tensor; }

  // Typed access; each throws seqrec::Error "<source>: expected <kind>, found <short repr>"
  // on a mismatch (source: the name given to load()).
  bool as_bool() const;             // Bool
  int64_t as_int() const;           // Int or Bool (a Python bool is an int)
  double as_float() const;          // Float, Int or Bool
  const std::string& as_string() const;  // String (UTF-8 as pickled)
  const std::string& as_bytes() const;   // Bytes; BigInt: two's complement, little-endian

  // List, Tuple, Set elements in order; an Object's appended items (list subclasses).
  std::span<const Value* const> elements() const;
  std::size_t size() const;  // elements() or items() count, whichever this kind has
  const Value& at(std::size_t index) const;  // elements()[index], or seqrec::Error

  // Dict entries in insertion order (an OrderedDict keeps its order); an Object's set
  // items (dict subclasses).
  std::span<const Item> items() const;
  // The value of a string key, nullptr if absent. On an Object, looks in its state when the
  // state is a dict (so config.find("final_config_dict") works on RecBole's Config).
  const Value* find(std::string_view key) const;
  const Value* find_int(int64_t key) const;  // integer keys (optimizer state)
  // find(key), or seqrec::Error naming the key.
  const Value& at(std::string_view key) const;

  // Global: module and name. Object: those of its class (empty if it was made by calling
  // something that is not a Global).
  const std::string& module() const;
  const std::string& name() const;
  std::string qualified_name() const;  // "module.name"
  // Object: the callable/class, its positional args (a Tuple), keyword args (NEWOBJ_EX;
  // nullptr otherwise) and the state given by BUILD (nullptr if none). Dict accepts BUILD
  // too (an OrderedDict's attributes, e.g. a state_dict's _metadata): state() works there.
  const Value& callable() const;
  const Value& args() const;
  const Value* kwargs() const;
  const Value* state() const;

  const StorageRef& storage() const;  // Storage
  const TensorRef& tensor() const;    // Tensor

  // One line for messages: "dict of 7 items", "str 'SASRec'", "recbole.config.configurator
  // .Config object", "tensor float32 [6, 4]". At most `max_length` characters.
  std::string describe(std::size_t max_length = 80) const;

 private:
  friend class Unpickler;
  struct Arena;
  struct Extra;  // payload of the rarer kinds
  [[noreturn]] void mismatch(const char* expected) const;
  std::string where() const;  // "<source>: " for error messages

  Kind kind_ = Kind::None;
  bool bool_ = false;
  int64_t int_ = 0;
  double float_ = 0.0;
  std::string text_;                  // String, Bytes, BigInt
  std::vector<const Value*> elements_;
  std::vector<Item> items_;
  std::unique_ptr<Extra> extra_;      // Global, Object, Storage, Tensor, Dict state
  const std::string* source_ = nullptr;  // the pickle's name, owned by the arena
  std::shared_ptr<Arena> arena_;      // set on the root only: owns every other Value
};

// Unpickles `bytes` (the whole data.pkl). `source` names it in errors, e.g.
// "model.pt: archive/data.pkl".
Value load(std::span<const uint8_t> bytes, const std::string& source, const Limits& limits = {});

// `text` with control characters replaced by '?' and cut at `max_length` ("..."), for
// one-line error messages quoting file content.
std::string printable(std::string_view text, std::size_t max_length = 80);

// Every Value reachable from `root` (root included), each once, in depth-first pre-order.
// Iterative, so safe on hostile (deep or cyclic) graphs.
std::vector<const Value*> reachable(const Value& root);

}  // namespace seqrec::pickle
