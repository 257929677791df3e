"""CryptoFace as a submission to the HE benchmark's face-verification harness (stage programs' library).

The stage programs in ``benchmark/submission/`` parse their arguments and call :mod:`.stages`; the client stages
(:mod:`.client`) hold the secret key, the server stages (:mod:`.server`) see only the public key folder, the
prepared model and ciphertext containers. :mod:`.dataset` builds the harness's ``face_dataset.h5`` and
:mod:`.checkout` assembles a harness checkout and runs it. Nothing here is imported by the ``cryptoface``
package; it imports the harness only through :mod:`.paths`, at run time, from the checkout it runs in.
"""
