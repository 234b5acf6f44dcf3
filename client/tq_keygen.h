/* tq_keygen.h - `tq keygen NAME [DIR]`: writes a CURVE certificate pair
   for a broker, a client or a worker. */
#ifndef TQ_KEYGEN_H
#define TQ_KEYGEN_H

/* Runs `tq keygen` with the arguments after the command word. Prints the
   files written and the public key; returns the process exit code (0 ok,
   1 cannot write, 2 usage). */
int tq_keygen_main(int argc, char **argv);

#endif
