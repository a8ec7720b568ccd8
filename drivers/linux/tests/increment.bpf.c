/* increment: adds 1 to each of the first three u32 of the data slot (r1); a run returns 0. */
int increment(unsigned int *data)
{
	for (int i = 0; i < 3; i++)
		data[i]++;
	return 0;
}
