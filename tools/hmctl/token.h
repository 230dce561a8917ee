/*
 * token.h - `hmctl token`, the development token minting command (token.c).
 */
#ifndef HMCTL_TOKEN_H
#define HMCTL_TOKEN_H

/*
 * Mints an HS256 JWT signed with HM_JWT_HS256_SECRET and prints it on stdout. argv holds the
 * arguments after "token" (argc of them). Returns the exit status: 0, 1 when signing fails,
 * 2 for a usage or configuration error (with a message on stderr).
 */
int hmctl_token(int argc, char **argv);

#endif
