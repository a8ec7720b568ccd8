/* Upstream driver test program: increments the three little-endian u32 at the start of the data
 * slot (0, 1, 2 -> 1, 2, 3) and returns 0. Built at test time: clang -target bpf -O2 -c. */
typedef unsigned int u32;

int increment(u32 *data)
{
    data[0] += 1;
    data[1] += 1;
    data[2] += 1;
    return 0;
}
