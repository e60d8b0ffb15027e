//! tmp
wasmtime::component::bindgen!({
    path: "../wit",
    world: "bourse:exchange/exchange-type@0.1.0",
    ownership: Borrowing { duplicate_if_necessary: true },
    imports: { default: trappable },
    debug: true,
});
