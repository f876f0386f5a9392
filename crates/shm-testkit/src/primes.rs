//! The reference the prime-table examples are checked against.

/// The first `n` primes, by a sieve of Eratosthenes over a range doubled
/// until it holds `n` of them (the tests check tables of up to some 10^5).
#[must_use]
pub fn first_primes(n: usize) -> Vec<u64> {
    let mut limit = 64usize;
    loop {
        let mut composite = vec![false; limit];
        let mut primes = Vec::new();
        for i in 2..limit {
            if !composite[i] {
                primes.push(i as u64);
                let mut j = i * i;
                while j < limit {
                    composite[j] = true;
                    j += i;
                }
            }
        }
        if primes.len() >= n {
            primes.truncate(n);
            return primes;
        }
        limit *= 2;
    }
}
