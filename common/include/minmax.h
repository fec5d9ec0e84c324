/* nbdsrv: MIN and MAX that evaluate each argument once. */
#ifndef NBDSRV_MINMAX_H
#define NBDSRV_MINMAX_H

#define MIN(a, b) ({                            \
      __typeof__ (a) a_ = (a);                  \
      __typeof__ (b) b_ = (b);                  \
      a_ < b_ ? a_ : b_;                        \
    })

#define MAX(a, b) ({                            \
      __typeof__ (a) a_ = (a);                  \
      __typeof__ (b) b_ = (b);                  \
      a_ > b_ ? a_ : b_;                        \
    })

#endif /* NBDSRV_MINMAX_H */
