fn main() {
    println!("masq");
}
