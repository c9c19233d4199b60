/// An immutable value behind a reference, for a large optional that most connections never
/// hold (a CONNECT under authentication, a Will, a client certificate): an idle connection then
/// pays one pointer for the slot instead of the value's whole size. Replace the box to change
/// the value, so that copies of the struct that holds it keep value semantics.
final class Boxed<Value> {
    let value: Value

    init(_ value: Value) { self.value = value }
}
