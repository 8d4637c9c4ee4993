#include "weights/pickle.h"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <unordered_set>

#include "engine/error.h"

namespace seqrec::pickle {

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    case DType::I8: case DType::U8: case DType::Bool: return 1;
  }
  return 1;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::I64: return "int64";
    case DType::I32: return "int32";
    case DType::I16: return "int16";
    case DType::I8: return "int8";
    case DType::U8: return "uint8";
    case DType::Bool: return "bool";
  }
  return "?";
}

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::BigInt: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::List: return "list";
    case Kind::Tuple: return "tuple";
    case Kind::Set: return "set";
    case Kind::Dict: return "dict";
    case Kind::Global: return "global";
    case Kind::Object: return "object";
    case Kind::Storage: return "storage";
    case Kind::Tensor: return "tensor";
  }
  return "?";
}

struct Value::Extra {
  std::string module, name;        // Global
  const Value* callable = nullptr;  // Object
  const Value* args = nullptr;      // Object: a Tuple
  const Value* kwargs = nullptr;    // Object made by NEWOBJ_EX
  const Value* state = nullptr;     // BUILD's argument
  StorageRef storage;               // Storage
  TensorRef tensor;                 // Tensor
};

struct Value::Arena {
  std::string source;        // every Value points here, to name the file in errors
  std::deque<Value> values;  // a deque never moves its elements, so pointers stay valid
};

Value::Value() = default;
Value::Value(Value&&) noexcept = default;
Value& Value::operator=(Value&&) noexcept = default;
Value::~Value() = default;

namespace {
const std::string kEmpty;
}  // namespace

std::string printable(std::string_view text, std::size_t max_length) {
  std::string out;
  for (char c : text.substr(0, max_length)) out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  if (text.size() > max_length) out += "...";
  return out;
}

// ---------------------------------------------------------------------------------------
// Accessors

std::string Value::where() const { return source_ ? *source_ + ": " : std::string(); }

void Value::mismatch(const char* expected) const {
  throw Error(where() + "expected " + expected + ", found " + describe());
}

bool Value::as_bool() const {
  if (kind_ != Kind::Bool) mismatch("a bool");
  return bool_;
}

int64_t Value::as_int() const {
  if (kind_ == Kind::Bool) return bool_ ? 1 : 0;
  if (kind_ != Kind::Int) mismatch(kind_ == Kind::BigInt ? "an int that fits in 64 bits" : "an int");
  return int_;
}

double Value::as_float() const {
  if (kind_ == Kind::Float) return float_;
  if (kind_ == Kind::Int) return static_cast<double>(int_);
  if (kind_ == Kind::Bool) return bool_ ? 1.0 : 0.0;
  mismatch("a number");
}

const std::string& Value::as_string() const {
  if (kind_ != Kind::String) mismatch("a str");
  return text_;
}

const std::string& Value::as_bytes() const {
  if (kind_ != Kind::Bytes && kind_ != Kind::BigInt) mismatch("bytes");
  return text_;
}

std::span<const Value* const> Value::elements() const { return elements_; }
std::span<const Value::Item> Value::items() const { return items_; }
std::size_t Value::size() const { return elements_.size() + items_.size(); }

const Value& Value::at(std::size_t index) const {
  if (index >= elements_.size())
    throw Error(where() + "index " + std::to_string(index) + " out of range: expected < " + std::to_string(elements_.size()) +
                " in " + describe());
  return *elements_[index];
}

// Searched from the back: of repeated keys the last wins, as in Python.
const Value* Value::find(std::string_view key) const {
  for (auto it = items_.rbegin(); it != items_.rend(); ++it)
    if (it->key->kind_ == Kind::String && it->key->text_ == key) return it->value;
  if (kind_ == Kind::Object && extra_ && extra_->state && extra_->state->kind_ == Kind::Dict)
    return extra_->state->find(key);
  return nullptr;
}

const Value* Value::find_int(int64_t key) const {
  for (auto it = items_.rbegin(); it != items_.rend(); ++it)
    if (it->key->kind_ == Kind::Int && it->key->int_ == key) return it->value;
  return nullptr;
}

const Value& Value::at(std::string_view key) const {
  if (kind_ != Kind::Dict && kind_ != Kind::Object) mismatch("a dict");
  const Value* value = find(key);
  if (!value) throw Error(where() + "key '" + printable(key) + "' not found in " + describe());
  return *value;
}

const std::string& Value::module() const {
  if (kind_ == Kind::Global) return extra_->module;
  if (kind_ == Kind::Object) return extra_->callable->kind_ == Kind::Global ? extra_->callable->extra_->module : kEmpty;
  mismatch("a global or an object");
}

const std::string& Value::name() const {
  if (kind_ == Kind::Global) return extra_->name;
  if (kind_ == Kind::Object) return extra_->callable->kind_ == Kind::Global ? extra_->callable->extra_->name : kEmpty;
  mismatch("a global or an object");
}

std::string Value::qualified_name() const { return module() + "." + name(); }

const Value& Value::callable() const {
  if (kind_ != Kind::Object) mismatch("an object");
  return *extra_->callable;
}

const Value& Value::args() const {
  if (kind_ != Kind::Object) mismatch("an object");
  return *extra_->args;
}

const Value* Value::kwargs() const {
  if (kind_ != Kind::Object) mismatch("an object");
  return extra_->kwargs;
}

const Value* Value::state() const { return extra_ ? extra_->state : nullptr; }

const StorageRef& Value::storage() const {
  if (kind_ != Kind::Storage) mismatch("a storage");
  return extra_->storage;
}

const TensorRef& Value::tensor() const {
  if (kind_ != Kind::Tensor) mismatch("a tensor");
  return extra_->tensor;
}

std::string Value::describe(std::size_t max_length) const {
  auto count = [](std::size_t n, const char* what) { return std::to_string(n) + " " + what + (n == 1 ? "" : "s"); };
  std::string s;
  switch (kind_) {
    case Kind::None: s = "None"; break;
    case Kind::Bool: s = bool_ ? "True" : "False"; break;
    case Kind::Int: s = "int " + std::to_string(int_); break;
    case Kind::BigInt: s = "int of " + count(text_.size(), "byte"); break;
    case Kind::Float: {
      char buffer[32];
      auto r = std::to_chars(buffer, buffer + sizeof buffer, float_);
      s = "float " + std::string(buffer, r.ptr);
      break;
    }
    case Kind::String: s = "str '" + printable(text_, max_length) + "'"; break;
    case Kind::Bytes: s = "bytes of length " + std::to_string(text_.size()); break;
    case Kind::List: s = "list of " + count(elements_.size(), "item"); break;
    case Kind::Tuple: s = "tuple of " + count(elements_.size(), "item"); break;
    case Kind::Set: s = "set of " + count(elements_.size(), "item"); break;
    case Kind::Dict: s = "dict of " + count(items_.size(), "item"); break;
    case Kind::Global: s = "global " + printable(qualified_name(), max_length); break;
    case Kind::Object:
      s = (module().empty() ? std::string("an") : printable(qualified_name(), max_length)) + " object";
      break;
    case Kind::Storage:
      s = std::string("storage ") + dtype_name(extra_->storage.dtype) + " '" + printable(extra_->storage.key) + "' of " +
          std::to_string(extra_->storage.numel) + " elements";
      break;
    case Kind::Tensor: {
      const TensorRef& t = extra_->tensor;
      s = std::string("tensor ") + dtype_name(t.storage.dtype) + " [";
      for (std::size_t i = 0; i < t.size.size(); ++i) s += (i ? ", " : "") + std::to_string(t.size[i]);
      s += "]";
      break;
    }
  }
  if (s.size() > max_length) s = s.substr(0, max_length > 3 ? max_length - 3 : 0) + "...";
  return s;
}

std::vector<const Value*> reachable(const Value& root) {
  std::vector<const Value*> order;
  std::unordered_set<const Value*> seen;
  std::vector<const Value*> todo{&root};
  while (!todo.empty()) {
    const Value* v = todo.back();
    todo.pop_back();
    if (!v || !seen.insert(v).second) continue;
    order.push_back(v);
    // Pushed in reverse so that children are visited in order.
    if (v->state()) todo.push_back(v->state());
    if (v->is_object()) {
      if (v->kwargs()) todo.push_back(v->kwargs());
      todo.push_back(&v->args());
      todo.push_back(&v->callable());
    }
    auto items = v->items();
    for (auto it = items.rbegin(); it != items.rend(); ++it) {
      todo.push_back(it->value);
      todo.push_back(it->key);
    }
    auto elements = v->elements();
    for (auto it = elements.rbegin(); it != elements.rend(); ++it) todo.push_back(*it);
  }
  return order;
}

// ---------------------------------------------------------------------------------------
// The virtual machine

namespace {

enum Op : uint8_t {
  MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', FLOAT = 'F', INT = 'I', BININT = 'J',
  BININT1 = 'K', LONG = 'L', BININT2 = 'M', NONE = 'N', PERSID = 'P', BINPERSID = 'Q', REDUCE = 'R',
  STRING = 'S', BINSTRING = 'T', SHORT_BINSTRING = 'U', UNICODE = 'V', BINUNICODE = 'X', APPEND = 'a',
  BUILD = 'b', GLOBAL = 'c', DICT = 'd', EMPTY_DICT = '}', APPENDS = 'e', GET = 'g', BINGET = 'h',
  INST = 'i', LONG_BINGET = 'j', LIST = 'l', EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q',
  LONG_BINPUT = 'r', SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G',
  PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83, EXT4 = 0x84, TUPLE1 = 0x85, TUPLE2 = 0x86,
  TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a, LONG4 = 0x8b,
  BINBYTES = 'B', SHORT_BINBYTES = 'C',
  SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e, EMPTY_SET = 0x8f, ADDITEMS = 0x90,
  FROZENSET = 0x91, NEWOBJ_EX = 0x92, STACK_GLOBAL = 0x93, MEMOIZE = 0x94, FRAME = 0x95,
  BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97, READONLY_BUFFER = 0x98,
};

const char* op_name(uint8_t op) {
  switch (op) {
    case MARK: return "MARK"; case STOP: return "STOP"; case POP: return "POP"; case POP_MARK: return "POP_MARK";
    case DUP: return "DUP"; case FLOAT: return "FLOAT"; case INT: return "INT"; case BININT: return "BININT";
    case BININT1: return "BININT1"; case LONG: return "LONG"; case BININT2: return "BININT2"; case NONE: return "NONE";
    case PERSID: return "PERSID"; case BINPERSID: return "BINPERSID"; case REDUCE: return "REDUCE";
    case STRING: return "STRING"; case BINSTRING: return "BINSTRING"; case SHORT_BINSTRING: return "SHORT_BINSTRING";
    case UNICODE: return "UNICODE"; case BINUNICODE: return "BINUNICODE"; case APPEND: return "APPEND";
    case BUILD: return "BUILD"; case GLOBAL: return "GLOBAL"; case DICT: return "DICT";
    case EMPTY_DICT: return "EMPTY_DICT"; case APPENDS: return "APPENDS"; case GET: return "GET";
    case BINGET: return "BINGET"; case INST: return "INST"; case LONG_BINGET: return "LONG_BINGET";
    case LIST: return "LIST"; case EMPTY_LIST: return "EMPTY_LIST"; case OBJ: return "OBJ"; case PUT: return "PUT";
    case BINPUT: return "BINPUT"; case LONG_BINPUT: return "LONG_BINPUT"; case SETITEM: return "SETITEM";
    case TUPLE: return "TUPLE"; case EMPTY_TUPLE: return "EMPTY_TUPLE"; case SETITEMS: return "SETITEMS";
    case BINFLOAT: return "BINFLOAT"; case PROTO: return "PROTO"; case NEWOBJ: return "NEWOBJ";
    case EXT1: return "EXT1"; case EXT2: return "EXT2"; case EXT4: return "EXT4"; case TUPLE1: return "TUPLE1";
    case TUPLE2: return "TUPLE2"; case TUPLE3: return "TUPLE3"; case NEWTRUE: return "NEWTRUE";
    case NEWFALSE: return "NEWFALSE"; case LONG1: return "LONG1"; case LONG4: return "LONG4";
    case BINBYTES: return "BINBYTES"; case SHORT_BINBYTES: return "SHORT_BINBYTES";
    case SHORT_BINUNICODE: return "SHORT_BINUNICODE"; case BINUNICODE8: return "BINUNICODE8";
    case BINBYTES8: return "BINBYTES8"; case EMPTY_SET: return "EMPTY_SET"; case ADDITEMS: return "ADDITEMS";
    case FROZENSET: return "FROZENSET"; case NEWOBJ_EX: return "NEWOBJ_EX"; case STACK_GLOBAL: return "STACK_GLOBAL";
    case MEMOIZE: return "MEMOIZE"; case FRAME: return "FRAME"; case BYTEARRAY8: return "BYTEARRAY8";
    case NEXT_BUFFER: return "NEXT_BUFFER"; case READONLY_BUFFER: return "READONLY_BUFFER";
  }
  return nullptr;
}

uint64_t read_le(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// UTF-8 whose code points are all < 256 -> those bytes (Python's str.encode('latin1')).
bool utf8_to_latin1(const std::string& in, std::string& out) {
  out.clear();
  for (std::size_t i = 0; i < in.size();) {
    const auto c = static_cast<uint8_t>(in[i]);
    if (c < 0x80) {
      out += static_cast<char>(c);
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < in.size() && (static_cast<uint8_t>(in[i + 1]) & 0xC0) == 0x80) {
      out += static_cast<char>(((c & 0x1F) << 6) | (static_cast<uint8_t>(in[i + 1]) & 0x3F));
      i += 2;
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace

class Unpickler {
 public:
  Unpickler(std::span<const uint8_t> in, const std::string& source, const Limits& limits)
      : in_(in), source_(source), limits_(limits), arena_(std::make_shared<Value::Arena>()) {
    arena_->source = source;
    // Work done by copying containers (set(list), OrderedDict(pairs), ...) is bounded by a
    // multiple of the input, so a small pickle cannot make us copy a big list a million times.
    copy_budget_ = 8 * static_cast<uint64_t>(in.size()) + (1u << 16);
    none_ = make(Kind::None);
    true_ = make(Kind::Bool);
    true_->bool_ = true;
    false_ = make(Kind::Bool);
  }

  Value run() {
    while (true) {
      op_offset_ = pos_;
      op_ = 0;  // until it is read, errors name no opcode
      if (pos_ == in_.size()) fail("the pickle ends without a STOP opcode (truncated)");
      op_ = in_[pos_++];
      if (!op_name(op_)) {
        op_ = 0;  // so fail() does not print a name for it
        fail("unknown opcode 0x" + hex_byte(in_[op_offset_]) + ", expected one of pickle protocols 0-5");
      }
      if (step()) break;
    }
    Value* result = top();  // op_ is still STOP for the message
    // The root is a shallow copy of the result (children stay in the arena) that owns the arena.
    Value root;
    root.kind_ = result->kind_;
    root.source_ = result->source_;
    root.bool_ = result->bool_;
    root.int_ = result->int_;
    root.float_ = result->float_;
    root.text_ = result->text_;
    root.elements_ = result->elements_;
    root.items_ = result->items_;
    if (result->extra_) root.extra_ = std::make_unique<Value::Extra>(*result->extra_);
    root.arena_ = std::move(arena_);
    return root;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    std::string where = source_ + ": ";
    if (op_) where += std::string("opcode ") + op_name(op_) + " ";
    throw Error(where + "at offset " + std::to_string(op_offset_) + ": " + what);
  }

  static std::string hex_byte(uint8_t b) {
    const char* digits = "0123456789abcdef";
    return std::string{digits[b >> 4], digits[b & 15]};
  }

  // --- input ---
  const uint8_t* take(uint64_t n) {
    const uint64_t left = in_.size() - pos_;
    if (n > left)
      fail("needs " + std::to_string(n) + " bytes, only " + std::to_string(left) + " left (truncated pickle)");
    const uint8_t* p = in_.data() + pos_;
    pos_ += static_cast<std::size_t>(n);
    return p;
  }
  std::string_view line() {
    const uint8_t* start = in_.data() + pos_;
    const void* nl = std::memchr(start, '\n', in_.size() - pos_);
    if (!nl) fail("expected a newline-terminated argument, found the end of the pickle");
    const auto n = static_cast<std::size_t>(static_cast<const uint8_t*>(nl) - start);
    pos_ += n + 1;
    return {reinterpret_cast<const char*>(start), n};
  }
  uint64_t length(int bytes) {
    const uint64_t n = read_le(take(bytes), bytes);
    if (n > in_.size() - pos_)
      fail("length " + std::to_string(n) + " exceeds the " + std::to_string(in_.size() - pos_) + " bytes left");
    return n;
  }
  int64_t decimal(std::string_view text) {
    int64_t v = 0;
    auto r = std::from_chars(text.data(), text.data() + text.size(), v);
    if (r.ec != std::errc() || r.ptr != text.data() + text.size())
      fail("expected a decimal integer that fits in 64 bits, found '" + printable(text, 40) + "'");
    return v;
  }

  // --- objects ---
  Value* make(Kind kind) {
    if (arena_->values.size() >= limits_.max_objects)
      fail("more than " + std::to_string(limits_.max_objects) + " objects (limit)");
    Value& v = arena_->values.emplace_back();
    v.kind_ = kind;
    v.source_ = &arena_->source;
    return &v;
  }
  Value::Extra& extra(Value* v) {
    if (!v->extra_) v->extra_ = std::make_unique<Value::Extra>();
    return *v->extra_;
  }
  Value* make_int(int64_t i) {
    Value* v = make(Kind::Int);
    v->int_ = i;
    return v;
  }
  Value* make_text(Kind kind, std::string_view text) {
    Value* v = make(kind);
    v->text_.assign(text.data(), text.size());
    return v;
  }
  Value* make_global(std::string_view module, std::string_view name) {
    Value* v = make(Kind::Global);
    // Protocol <= 2 pickles written by Python 3 use Python 2 module names.
    if (module == "__builtin__") module = "builtins";
    if (module == "copy_reg") module = "copyreg";
    extra(v).module = module;
    extra(v).name = name;
    return v;
  }
  Value* make_object(const Value* callable, const Value* args, const Value* kwargs = nullptr) {
    Value* v = make(Kind::Object);
    extra(v).callable = callable;
    extra(v).args = args;
    extra(v).kwargs = kwargs;
    return v;
  }
  void charge_copy(std::size_t n) {
    if (n > copy_budget_) fail("rebuilds containers too often (copy budget of the input size exceeded)");
    copy_budget_ -= n;
  }

  // --- stack ---
  std::size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(Value* v) {
    if (stack_.size() + marks_.size() >= limits_.max_stack)
      fail("stack deeper than " + std::to_string(limits_.max_stack) + " (limit)");
    stack_.push_back(v);
  }
  Value* pop() {
    if (stack_.size() <= floor()) fail(stack_.empty() ? "stack underflow" : "stack underflow (below the MARK)");
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top() {
    if (stack_.size() <= floor()) fail(stack_.empty() ? "stack underflow" : "stack underflow (below the MARK)");
    return stack_.back();
  }
  std::vector<Value*> pop_mark() {
    if (marks_.empty()) fail("no MARK on the stack");
    const std::size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<Value*> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }
  Value* expect(Value* v, Kind kind, const char* what) {
    if (v->kind_ != kind) fail(std::string(what) + ": expected a " + kind_name(kind) + ", found " + v->describe());
    return v;
  }
  Value* tuple(std::vector<Value*> items) {
    Value* t = make(Kind::Tuple);
    t->elements_.assign(items.begin(), items.end());
    return t;
  }

  // --- memo ---
  void memo_put(uint64_t key) {
    Value* v = top();
    auto it = memo_.find(key);
    if (it != memo_.end()) {
      it->second = v;
      return;
    }
    if (memo_.size() >= limits_.max_memo) fail("memo larger than " + std::to_string(limits_.max_memo) + " (limit)");
    memo_.emplace(key, v);
  }
  void memo_get(uint64_t key) {
    auto it = memo_.find(key);
    if (it == memo_.end())
      fail("memo key " + std::to_string(key) + " not found (memo has " + std::to_string(memo_.size()) + " entries)");
    push(it->second);
  }

  // --- containers ---
  void append_to(Value* target, const std::vector<Value*>& items) {
    if (target->kind_ != Kind::List && target->kind_ != Kind::Object)
      fail("expected a list to append to, found " + target->describe());
    target->elements_.insert(target->elements_.end(), items.begin(), items.end());
  }
  void set_items(Value* target, const std::vector<Value*>& items) {
    if (target->kind_ != Kind::Dict && target->kind_ != Kind::Object)
      fail("expected a dict to set items in, found " + target->describe());
    if (items.size() % 2 != 0) fail("expected key/value pairs, found an odd count of " + std::to_string(items.size()));
    for (std::size_t i = 0; i < items.size(); i += 2) set_item(target, items[i], items[i + 1]);
  }
  // Keys are not deduplicated (a pickled dict never repeats one; checking would make hostile
  // input quadratic); find() returns the last of repeated keys, as Python would keep.
  void set_item(Value* dict, Value* key, Value* value) { dict->items_.push_back({key, value}); }
  void add_to_set(Value* set, std::span<Value* const> items) {
    set->elements_.insert(set->elements_.end(), items.begin(), items.end());
  }

  // --- calls: REDUCE, NEWOBJ, INST, OBJ ---
  Value* call(const Value* callable, const Value* args, std::size_t depth) {
    if (depth > limits_.max_call_depth) fail("calls nested deeper than " + std::to_string(limits_.max_call_depth));
    if (args->kind_ != Kind::Tuple) fail("call arguments: expected a tuple, found " + args->describe());
    if (callable->kind_ != Kind::Global) return make_object(callable, args);
    const std::string& module = callable->extra_->module;
    const std::string& name = callable->extra_->name;
    const auto& a = args->elements_;

    if ((module == "collections" && name == "OrderedDict") || (module == "builtins" && name == "dict")) {
      Value* dict = make(Kind::Dict);
      if (!a.empty()) {
        const Value* source = a[0];
        charge_copy(source->elements_.size() + source->items_.size());
        if (source->kind_ == Kind::Dict) {
          dict->items_ = source->items_;
        } else if (source->kind_ == Kind::List || source->kind_ == Kind::Tuple) {
          for (const Value* pair : source->elements_) {
            if ((pair->kind_ != Kind::Tuple && pair->kind_ != Kind::List) || pair->elements_.size() != 2)
              fail(name + " argument: expected (key, value) pairs, found " + pair->describe());
            set_item(dict, const_cast<Value*>(pair->elements_[0]), const_cast<Value*>(pair->elements_[1]));
          }
        } else {
          fail(name + " argument: expected a dict or a list of pairs, found " + source->describe());
        }
      }
      return dict;
    }
    if (module == "builtins" && (name == "set" || name == "frozenset")) {
      Value* set = make(Kind::Set);
      if (!a.empty()) {
        const Value* source = a[0];
        if (source->kind_ != Kind::List && source->kind_ != Kind::Tuple && source->kind_ != Kind::Set)
          fail(name + " argument: expected a list, found " + source->describe());
        charge_copy(source->elements_.size());
        set->elements_ = source->elements_;
      }
      return set;
    }
    if (module == "builtins" && name == "getattr" && a.size() == 2 && a[0]->kind_ == Kind::Global &&
        a[1]->kind_ == Kind::String) {
      // getattr(SomeEnum, "MEMBER"): name the member like a nested global.
      return make_global(a[0]->extra_->module, a[0]->extra_->name + "." + a[1]->text_);
    }
    if ((module == "_codecs" && name == "encode") || (module == "builtins" && (name == "bytes" || name == "bytearray"))) {
      // Python 3 bytes at protocol <= 2: _codecs.encode('\x00\xff', 'latin1').
      if (a.empty()) return make(Kind::Bytes);
      if (a.size() == 1 && a[0]->kind_ == Kind::Bytes) return make_text(Kind::Bytes, a[0]->text_);
      if (a.size() == 2 && a[0]->kind_ == Kind::String && a[1]->kind_ == Kind::String &&
          (a[1]->text_ == "latin1" || a[1]->text_ == "latin-1")) {
        charge_copy(a[0]->text_.size());
        Value* bytes = make(Kind::Bytes);
        if (!utf8_to_latin1(a[0]->text_, bytes->text_)) fail("latin1 bytes: text has characters above U+00FF");
        return bytes;
      }
      return make_object(callable, args);
    }
    if (module == "torch._utils" && (name == "_rebuild_tensor_v2" || name == "_rebuild_tensor")) return rebuild_tensor(a);
    if (module == "torch._utils" && (name == "_rebuild_parameter" || name == "_rebuild_parameter_with_state")) {
      if (a.empty() || a[0]->kind_ != Kind::Tensor)
        fail(name + ": expected a tensor as first argument, found " + (a.empty() ? std::string("nothing") : a[0]->describe()));
      return const_cast<Value*>(a[0]);
    }
    if (module == "torch._tensor" && (name == "_rebuild_from_type_v2" || name == "_rebuild_from_type")) {
      // (func, new_type, args, state): a Tensor subclass rebuilt by func(*args).
      if (a.size() < 3) fail(name + ": expected at least 3 arguments, found " + std::to_string(a.size()));
      return call(a[0], a[2], depth + 1);
    }
    return make_object(callable, args);
  }

  Value* rebuild_tensor(const std::vector<const Value*>& a) {
    // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    if (a.size() < 4) fail("_rebuild_tensor: expected at least 4 arguments, found " + std::to_string(a.size()));
    if (a[0]->kind_ != Kind::Storage) fail("_rebuild_tensor: expected a storage, found " + a[0]->describe());
    if (a[1]->kind_ != Kind::Int || a[1]->int_ < 0)
      fail("_rebuild_tensor: expected a storage offset >= 0, found " + a[1]->describe());
    Value* t = make(Kind::Tensor);
    TensorRef& ref = extra(t).tensor;
    ref.storage = a[0]->extra_->storage;
    ref.offset = a[1]->int_;
    for (int which = 0; which < 2; ++which) {
      const Value* dims = a[2 + which];
      const char* what = which == 0 ? "size" : "stride";
      if (dims->kind_ != Kind::Tuple && dims->kind_ != Kind::List)
        fail(std::string("_rebuild_tensor: expected a tuple as ") + what + ", found " + dims->describe());
      if (dims->elements_.size() > limits_.max_tensor_rank)
        fail(std::string("_rebuild_tensor: ") + what + " has " + std::to_string(dims->elements_.size()) +
             " dimensions, more than the limit of " + std::to_string(limits_.max_tensor_rank));
      auto& out = which == 0 ? ref.size : ref.stride;
      for (const Value* d : dims->elements_) {
        if (d->kind_ != Kind::Int || d->int_ < 0)
          fail(std::string("_rebuild_tensor: expected ") + what + " entries to be ints >= 0, found " + d->describe());
        out.push_back(d->int_);
      }
    }
    if (ref.size.size() != ref.stride.size())
      fail("_rebuild_tensor: size has " + std::to_string(ref.size.size()) + " dimensions but stride has " +
           std::to_string(ref.stride.size()));
    if (a.size() >= 5 && a[4]->kind_ == Kind::Bool) ref.requires_grad = a[4]->bool_;
    return t;
  }

  Value* persistent_load(const Value* pid) {
    // ('storage', torch.FloatStorage, key, location, numel)
    if (pid->kind_ != Kind::Tuple || pid->elements_.size() != 5)
      fail("expected a persistent id ('storage', type, key, location, numel), found " + pid->describe());
    const auto& f = pid->elements_;
    if (f[0]->kind_ != Kind::String || f[0]->text_ != "storage")
      fail("expected persistent id type 'storage', found " + f[0]->describe());
    if (f[1]->kind_ != Kind::Global || f[1]->extra_->module != "torch")
      fail("expected a torch storage class, found " + f[1]->describe());
    if (f[2]->kind_ != Kind::String) fail("expected a storage key string, found " + f[2]->describe());
    if (f[3]->kind_ != Kind::String) fail("expected a storage location string, found " + f[3]->describe());
    if (f[4]->kind_ != Kind::Int || f[4]->int_ < 0) fail("expected a storage size >= 0, found " + f[4]->describe());
    static const std::pair<const char*, DType> kStorages[] = {
        {"FloatStorage", DType::F32}, {"DoubleStorage", DType::F64}, {"HalfStorage", DType::F16},
        {"BFloat16Storage", DType::BF16}, {"LongStorage", DType::I64}, {"IntStorage", DType::I32},
        {"ShortStorage", DType::I16}, {"CharStorage", DType::I8}, {"ByteStorage", DType::U8},
        {"BoolStorage", DType::Bool}, {"UntypedStorage", DType::U8}};
    const std::string& type = f[1]->extra_->name;
    const auto* found = std::find_if(std::begin(kStorages), std::end(kStorages),
                                     [&](const auto& s) { return type == s.first; });
    if (found == std::end(kStorages))
      fail("storage class torch." + type + " is not supported, expected Float/Double/Half/BFloat16/Long/Int/Short/"
           "Char/Byte/BoolStorage");
    Value* v = make(Kind::Storage);
    StorageRef& s = extra(v).storage;
    s.key = f[2]->text_;
    s.dtype = found->second;
    s.numel = f[4]->int_;
    s.location = f[3]->text_;
    return v;
  }

  void build(Value* target, Value* state) {
    switch (target->kind_) {
      case Kind::None: case Kind::Bool: case Kind::Int: case Kind::BigInt: case Kind::Float:
      case Kind::String: case Kind::Bytes:
        fail("cannot set state on " + target->describe());
      default: break;
    }
    Value::Extra& e = extra(target);
    if (e.state && e.state->kind_ == Kind::Dict && state->kind_ == Kind::Dict) {
      // A second BUILD updates the attributes; merge into a fresh dict (the old one may be shared).
      charge_copy(e.state->items_.size() + state->items_.size());
      Value* merged = make(Kind::Dict);
      merged->items_ = e.state->items_;
      merged->items_.insert(merged->items_.end(), state->items_.begin(), state->items_.end());
      e.state = merged;
    } else {
      e.state = state;
    }
  }

  // Python's text-protocol string literals: 'abc' with backslash escapes.
  std::string unquote(std::string_view text) {
    if (text.size() < 2 || (text.front() != '\'' && text.front() != '"') || text.back() != text.front())
      fail("expected a quoted string, found '" + printable(text, 40) + "'");
    text = text.substr(1, text.size() - 2);
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
      if (text[i] != '\\') {
        out += text[i];
        continue;
      }
      if (++i == text.size()) fail("string ends with a backslash");
      switch (text[i]) {
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'x': {
          unsigned v = 0;
          if (i + 2 >= text.size() || std::from_chars(text.data() + i + 1, text.data() + i + 3, v, 16).ptr != text.data() + i + 3)
            fail("bad \\x escape in string");
          out += static_cast<char>(v);
          i += 2;
          break;
        }
        default: fail("unsupported escape \\" + printable(text.substr(i, 1)) + " in string");
      }
    }
    return out;
  }

  // Python's raw-unicode-escape: latin-1 bytes plus \uXXXX and \UXXXXXXXX.
  std::string raw_unicode(std::string_view text) {
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
      std::size_t digits = 0;
      if (text[i] == '\\' && i + 1 < text.size()) digits = text[i + 1] == 'u' ? 4 : text[i + 1] == 'U' ? 8 : 0;
      if (digits) {
        uint32_t cp = 0;
        if (i + 2 + digits > text.size() ||
            std::from_chars(text.data() + i + 2, text.data() + i + 2 + digits, cp, 16).ptr != text.data() + i + 2 + digits ||
            cp > 0x10FFFF)
          fail("bad \\u escape in unicode string");
        append_utf8(out, cp);
        i += 1 + digits;
      } else {
        append_utf8(out, static_cast<uint8_t>(text[i]));
      }
    }
    return out;
  }

  Value* make_long(const uint8_t* p, uint64_t n) {
    // Two's complement, little-endian; ints beyond 64 bits stay raw bytes (BigInt).
    if (n == 0) return make_int(0);
    const bool negative = p[n - 1] & 0x80;
    bool fits = n < 8 || static_cast<bool>(p[7] & 0x80) == negative;
    for (uint64_t i = 8; fits && i < n; ++i) fits = p[i] == (negative ? 0xFF : 0x00);
    if (fits) {
      uint64_t v = negative ? ~uint64_t{0} : 0;  // sign extension
      for (uint64_t i = 0; i < std::min<uint64_t>(n, 8); ++i) {
        v &= ~(uint64_t{0xFF} << (8 * i));
        v |= uint64_t{p[i]} << (8 * i);
      }
      return make_int(static_cast<int64_t>(v));
    }
    return make_text(Kind::BigInt, std::string_view(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n)));
  }

  // Executes the opcode in op_; true at STOP.
  bool step() {
    switch (op_) {
      case PROTO: {
        const uint8_t version = *take(1);
        if (version > 5) fail("protocol " + std::to_string(version) + " is not supported, expected 0-5");
        return false;
      }
      case FRAME: length(8); return false;  // frames only group opcodes; the data is contiguous
      case STOP: return true;

      case MARK:
        if (stack_.size() + marks_.size() >= limits_.max_stack)
          fail("stack deeper than " + std::to_string(limits_.max_stack) + " (limit)");
        marks_.push_back(stack_.size());
        return false;
      case POP:
        if (stack_.size() > floor()) stack_.pop_back();
        else if (!marks_.empty()) marks_.pop_back();  // Python pops the mark itself then
        else fail("stack underflow");
        return false;
      case POP_MARK: pop_mark(); return false;
      case DUP: push(top()); return false;

      case NONE: push(none_); return false;
      case NEWTRUE: push(true_); return false;
      case NEWFALSE: push(false_); return false;
      case BININT: push(make_int(static_cast<int32_t>(read_le(take(4), 4)))); return false;
      case BININT1: push(make_int(*take(1))); return false;
      case BININT2: push(make_int(static_cast<int64_t>(read_le(take(2), 2)))); return false;
      case LONG1: {
        const uint64_t n = length(1);
        push(make_long(take(n), n));
        return false;
      }
      case LONG4: {
        const auto n = static_cast<int32_t>(read_le(take(4), 4));
        if (n < 0) fail("negative length " + std::to_string(n));
        if (static_cast<uint64_t>(n) > in_.size() - pos_)
          fail("length " + std::to_string(n) + " exceeds the " + std::to_string(in_.size() - pos_) + " bytes left");
        push(make_long(take(static_cast<uint64_t>(n)), static_cast<uint64_t>(n)));
        return false;
      }
      case INT: {
        std::string_view text = line();
        if (text == "00") push(false_);
        else if (text == "01") push(true_);
        else push(make_int(decimal(text)));
        return false;
      }
      case LONG: {
        std::string_view text = line();
        if (!text.empty() && text.back() == 'L') text.remove_suffix(1);
        push(make_int(decimal(text)));
        return false;
      }
      case BINFLOAT: {
        const uint8_t* p = take(8);
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | p[i];  // big-endian
        Value* v = make(Kind::Float);
        v->float_ = std::bit_cast<double>(bits);
        push(v);
        return false;
      }
      case FLOAT: {
        std::string_view text = line();
        double d = 0;
        auto r = std::from_chars(text.data(), text.data() + text.size(), d);
        if (r.ec != std::errc() || r.ptr != text.data() + text.size())
          fail("expected a float, found '" + printable(text, 40) + "'");
        Value* v = make(Kind::Float);
        v->float_ = d;
        push(v);
        return false;
      }

      case SHORT_BINUNICODE: case BINUNICODE: case BINUNICODE8:
      case SHORT_BINSTRING: case BINSTRING:
      case SHORT_BINBYTES: case BINBYTES: case BINBYTES8: case BYTEARRAY8: {
        const int width = (op_ == SHORT_BINUNICODE || op_ == SHORT_BINSTRING || op_ == SHORT_BINBYTES) ? 1
                          : (op_ == BINUNICODE8 || op_ == BINBYTES8 || op_ == BYTEARRAY8)               ? 8
                                                                                                        : 4;
        const uint64_t n = length(width);
        const bool is_text = op_ == SHORT_BINUNICODE || op_ == BINUNICODE || op_ == BINUNICODE8 ||
                             op_ == SHORT_BINSTRING || op_ == BINSTRING;
        push(make_text(is_text ? Kind::String : Kind::Bytes,
                       std::string_view(reinterpret_cast<const char*>(take(n)), static_cast<std::size_t>(n))));
        return false;
      }
      case STRING: push(make_text(Kind::String, unquote(line()))); return false;
      case UNICODE: push(make_text(Kind::String, raw_unicode(line()))); return false;

      case EMPTY_TUPLE: push(make(Kind::Tuple)); return false;
      case TUPLE1: case TUPLE2: case TUPLE3: {
        std::vector<Value*> items(op_ - TUPLE1 + 1);
        for (auto it = items.rbegin(); it != items.rend(); ++it) *it = pop();
        push(tuple(std::move(items)));
        return false;
      }
      case TUPLE: push(tuple(pop_mark())); return false;
      case EMPTY_LIST: push(make(Kind::List)); return false;
      case LIST: {
        auto items = pop_mark();
        Value* list = make(Kind::List);
        list->elements_.assign(items.begin(), items.end());
        push(list);
        return false;
      }
      case APPEND: {
        Value* item = pop();
        append_to(top(), {item});
        return false;
      }
      case APPENDS: {
        auto items = pop_mark();
        append_to(top(), items);
        return false;
      }
      case EMPTY_DICT: push(make(Kind::Dict)); return false;
      case DICT: {
        auto items = pop_mark();
        Value* dict = make(Kind::Dict);
        set_items(dict, items);
        push(dict);
        return false;
      }
      case SETITEM: {
        Value* value = pop();
        Value* key = pop();
        set_items(top(), {key, value});
        return false;
      }
      case SETITEMS: {
        auto items = pop_mark();
        set_items(top(), items);
        return false;
      }
      case EMPTY_SET: push(make(Kind::Set)); return false;
      case ADDITEMS: {
        auto items = pop_mark();
        add_to_set(expect(top(), Kind::Set, "ADDITEMS target"), items);
        return false;
      }
      case FROZENSET: {
        auto items = pop_mark();
        Value* set = make(Kind::Set);
        add_to_set(set, items);
        push(set);
        return false;
      }

      case PUT: memo_put(static_cast<uint64_t>(decimal(line()))); return false;
      case BINPUT: memo_put(*take(1)); return false;
      case LONG_BINPUT: memo_put(read_le(take(4), 4)); return false;
      case MEMOIZE: memo_put(memo_.size()); return false;
      case GET: memo_get(static_cast<uint64_t>(decimal(line()))); return false;
      case BINGET: memo_get(*take(1)); return false;
      case LONG_BINGET: memo_get(read_le(take(4), 4)); return false;

      case GLOBAL: {
        std::string_view module = line();
        std::string_view name = line();
        push(make_global(module, name));
        return false;
      }
      case STACK_GLOBAL: {
        Value* name = expect(pop(), Kind::String, "STACK_GLOBAL name");
        Value* module = expect(pop(), Kind::String, "STACK_GLOBAL module");
        push(make_global(module->text_, name->text_));
        return false;
      }
      case REDUCE: {
        Value* args = pop();
        Value* callable = pop();
        push(call(callable, args, 0));
        return false;
      }
      case NEWOBJ: {
        Value* args = expect(pop(), Kind::Tuple, "NEWOBJ arguments");
        Value* cls = pop();
        push(call(cls, args, 0));
        return false;
      }
      case NEWOBJ_EX: {
        Value* kwargs = expect(pop(), Kind::Dict, "NEWOBJ_EX keyword arguments");
        Value* args = expect(pop(), Kind::Tuple, "NEWOBJ_EX arguments");
        Value* cls = pop();
        push(kwargs->items_.empty() ? call(cls, args, 0) : make_object(cls, args, kwargs));
        return false;
      }
      case INST: {
        std::string_view module = line();
        std::string_view name = line();
        Value* args = tuple(pop_mark());
        push(call(make_global(module, name), args, 0));
        return false;
      }
      case OBJ: {
        auto items = pop_mark();
        if (items.empty()) fail("expected a class after the MARK, found nothing");
        Value* cls = items.front();
        items.erase(items.begin());
        push(call(cls, tuple(std::move(items)), 0));
        return false;
      }
      case BUILD: {
        Value* state = pop();
        build(top(), state);
        return false;
      }
      case BINPERSID: push(persistent_load(pop())); return false;
      case PERSID: fail("text persistent ids are not supported (torch.save writes BINPERSID)");
      case EXT1: case EXT2: case EXT4: fail("extension registry codes are not supported");
      case NEXT_BUFFER: case READONLY_BUFFER: fail("out-of-band buffers (protocol 5) are not supported");
    }
    fail("opcode not handled");
  }

  std::span<const uint8_t> in_;
  const std::string& source_;
  const Limits& limits_;
  std::shared_ptr<Value::Arena> arena_;
  std::size_t pos_ = 0;
  std::size_t op_offset_ = 0;
  uint8_t op_ = 0;
  uint64_t copy_budget_ = 0;
  std::vector<Value*> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
  Value* none_ = nullptr;
  Value* true_ = nullptr;
  Value* false_ = nullptr;
};

Value load(std::span<const uint8_t> bytes, const std::string& source, const Limits& limits) {
  if (bytes.empty()) throw Error(source + ": empty pickle, expected at least a STOP opcode");
  return Unpickler(bytes, source, limits).run();
}

}  // namespace seqrec::pickle
