/*
 * replay_main.c - runs a fuzz target's LLVMFuzzerTestOneInput once on every
 * file of a corpus directory (or on the files named), without libFuzzer, so
 * the committed corpus is a regression test in every build (gcc too).  Each
 * input is copied into an exact-size heap buffer so AddressSanitizer sees a
 * one-byte over-read.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
  FILE *f = fopen(path, "rb");
  struct stat st;
  uint8_t *buf;
  size_t n;

  if (!f || fstat(fileno(f), &st) != 0) {
    fprintf(stderr, "cannot open %s\n", path);
    if (f)
      fclose(f);
    return -1;
  }
  buf = malloc(st.st_size > 0 ? (size_t)st.st_size : 1);
  if (!buf) {
    fclose(f);
    return -1;
  }
  n = fread(buf, 1, (size_t)st.st_size, f);
  fclose(f);
  LLVMFuzzerTestOneInput(buf, n);
  free(buf);
  return 0;
}

int main(int argc, char **argv)
{
  int count = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) != 0) {
      fprintf(stderr, "no such corpus: %s\n", argv[i]);
      return 1;
    }
    if (S_ISDIR(st.st_mode)) {
      DIR *d = opendir(argv[i]);
      struct dirent *e;
      if (!d)
        return 1;
      while ((e = readdir(d)) != NULL) {
        char path[4096];
        if (e->d_name[0] == '.')
          continue;
        snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
        if (run_file(path) != 0)
          return 1;
        count++;
      }
      closedir(d);
    } else {
      if (run_file(argv[i]) != 0)
        return 1;
      count++;
    }
  }
  printf("replayed %d inputs\n", count);
  return count > 0 ? 0 : 1;
}
