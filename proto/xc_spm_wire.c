/* SentencePiece model file -> plain structs (the only user of sentencepiece_model.pb-c.h). */
#include "xc_spm_wire.h"

#include <stdint.h>
#include <string.h>

#include "sentencepiece_model.pb-c.h"
#include "xc_mem.h"

/* protobuf-c allocates through xc_malloc so that tests see its memory too. */
static void *pb_alloc(void *data, size_t n) {
    (void)data;
    return xc_malloc(n ? n : 1);
}

static void pb_free(void *data, void *p) {
    (void)data;
    xc_free(p);
}

static ProtobufCAllocator pb_allocator = {pb_alloc, pb_free, NULL};

#define XC_SPM_MAX_FILE (1u << 30)

xc_status xc_spm_wire_decode_model(const uint8_t *buf, size_t len, xc_spm_model *out) {
    if (len > XC_SPM_MAX_FILE) {
        return xc_errf(XC_ERR_ARG, "SentencePiece model of %zu bytes is larger than 1 GiB", len);
    }
    if (len == 0) {
        return xc_errf(XC_ERR_PROTO, "SentencePiece model file is empty");
    }
    Sentencepiece__ModelProto *mp = sentencepiece__model_proto__unpack(&pb_allocator, len, buf);
    if (mp == NULL) {
        return xc_errf(XC_ERR_PROTO, "not a SentencePiece model: protobuf parse failed");
    }
    xc_status st = XC_OK;
    xc_spm_model m;
    memset(&m, 0, sizeof m);
    if (mp->n_pieces == 0) {
        st = xc_errf(XC_ERR_PROTO, "SentencePiece model has no pieces");
        goto out;
    }
    // One pool for every piece text (each NUL-terminated) and the small strings.
    size_t pool = 0;
    for (size_t i = 0; i < mp->n_pieces; i++) {
        pool += mp->pieces[i]->piece.len + 1;
    }
    const Sentencepiece__TrainerSpec *ts = mp->trainer_spec;
    const Sentencepiece__NormalizerSpec *ns = mp->normalizer_spec;
    static const Sentencepiece__TrainerSpec ts_default = SENTENCEPIECE__TRAINER_SPEC__INIT;
    static const Sentencepiece__NormalizerSpec ns_default = SENTENCEPIECE__NORMALIZER_SPEC__INIT;
    if (ts == NULL) {
        ts = &ts_default;
    }
    if (ns == NULL) {
        ns = &ns_default;
    }
    const char *name = ns->name ? ns->name : "";
    size_t name_len = strlen(name);
    pool += ts->unk_surface.len + 1 + name_len + 1;
    m.pieces = xc_calloc(mp->n_pieces, sizeof *m.pieces);
    m.text_pool = xc_malloc(pool);
    if (m.pieces == NULL || m.text_pool == NULL) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory for %zu SentencePiece pieces", mp->n_pieces);
        goto out;
    }
    char *p = m.text_pool;
    for (size_t i = 0; i < mp->n_pieces; i++) {
        const Sentencepiece__ModelProto__SentencePiece *sp = mp->pieces[i];
        if (sp->piece.len) {
            memcpy(p, sp->piece.data, sp->piece.len);
        }
        p[sp->piece.len] = '\0';
        m.pieces[i].text = p;
        m.pieces[i].len = sp->piece.len;
        m.pieces[i].score = sp->score;
        m.pieces[i].type = (int)sp->type;
        p += sp->piece.len + 1;
    }
    m.n_pieces = mp->n_pieces;
    m.unk_surface = p;
    if (ts->unk_surface.len) {
        memcpy(p, ts->unk_surface.data, ts->unk_surface.len);
    }
    p[ts->unk_surface.len] = '\0';
    m.unk_surface_len = ts->unk_surface.len;
    p += ts->unk_surface.len + 1;
    m.normalizer_name = p;
    memcpy(p, name, name_len + 1);

    m.has_trainer_spec = mp->trainer_spec != NULL;
    m.model_type = (int)ts->model_type;
    m.vocab_size = ts->vocab_size;
    m.treat_whitespace_as_suffix = ts->treat_whitespace_as_suffix;
    m.byte_fallback = ts->byte_fallback;
    m.unk_id = ts->unk_id;
    m.bos_id = ts->bos_id;
    m.eos_id = ts->eos_id;
    m.pad_id = ts->pad_id;
    m.precompiled_charsmap_len = ns->has_precompiled_charsmap ? ns->precompiled_charsmap.len : 0;
    m.add_dummy_prefix = ns->add_dummy_prefix;
    m.remove_extra_whitespaces = ns->remove_extra_whitespaces;
    m.escape_whitespaces = ns->escape_whitespaces;
    if (mp->denormalizer_spec && mp->denormalizer_spec->has_precompiled_charsmap) {
        m.denormalizer_charsmap_len = mp->denormalizer_spec->precompiled_charsmap.len;
    }
    *out = m;
    memset(&m, 0, sizeof m);
out:
    xc_spm_wire_model_fini(&m);
    sentencepiece__model_proto__free_unpacked(mp, &pb_allocator);
    return st;
}

void xc_spm_wire_model_fini(xc_spm_model *m) {
    if (m == NULL) {
        return;
    }
    xc_free(m->pieces);
    xc_free(m->text_pool);
    memset(m, 0, sizeof *m);
}

xc_status xc_spm_wire_encode_model(const xc_spm_model *m, uint8_t **out, size_t *len) {
    if (m == NULL || m->n_pieces == 0 || out == NULL || len == NULL) {
        return xc_errf(XC_ERR_ARG, "SentencePiece model to encode has no pieces");
    }
    Sentencepiece__ModelProto mp = SENTENCEPIECE__MODEL_PROTO__INIT;
    Sentencepiece__TrainerSpec ts = SENTENCEPIECE__TRAINER_SPEC__INIT;
    Sentencepiece__NormalizerSpec ns = SENTENCEPIECE__NORMALIZER_SPEC__INIT;
    Sentencepiece__ModelProto__SentencePiece *sp = xc_calloc(m->n_pieces, sizeof *sp);
    Sentencepiece__ModelProto__SentencePiece **spp = xc_calloc(m->n_pieces, sizeof *spp);
    if (sp == NULL || spp == NULL) {
        xc_free(sp);
        xc_free(spp);
        return xc_errf(XC_ERR_NOMEM, "out of memory encoding %zu pieces", m->n_pieces);
    }
    for (size_t i = 0; i < m->n_pieces; i++) {
        static const Sentencepiece__ModelProto__SentencePiece init =
            SENTENCEPIECE__MODEL_PROTO__SENTENCE_PIECE__INIT;
        sp[i] = init;
        sp[i].has_piece = 1;
        sp[i].piece.data = (uint8_t *)(uintptr_t)m->pieces[i].text;
        sp[i].piece.len = m->pieces[i].len;
        sp[i].has_score = 1;
        sp[i].score = m->pieces[i].score;
        sp[i].has_type = 1;
        sp[i].type = (Sentencepiece__ModelProto__SentencePiece__Type)m->pieces[i].type;
        spp[i] = &sp[i];
    }
    mp.n_pieces = m->n_pieces;
    mp.pieces = spp;
    ts.has_model_type = 1;
    ts.model_type = (Sentencepiece__TrainerSpec__ModelType)m->model_type;
    ts.has_vocab_size = 1;
    ts.vocab_size = m->vocab_size;
    ts.has_treat_whitespace_as_suffix = 1;
    ts.treat_whitespace_as_suffix = m->treat_whitespace_as_suffix;
    ts.has_byte_fallback = 1;
    ts.byte_fallback = m->byte_fallback;
    ts.has_unk_id = ts.has_bos_id = ts.has_eos_id = ts.has_pad_id = 1;
    ts.unk_id = m->unk_id;
    ts.bos_id = m->bos_id;
    ts.eos_id = m->eos_id;
    ts.pad_id = m->pad_id;
    mp.trainer_spec = &ts;
    ns.name = (char *)(uintptr_t)(m->normalizer_name ? m->normalizer_name : "");
    ns.has_add_dummy_prefix = ns.has_remove_extra_whitespaces = ns.has_escape_whitespaces = 1;
    ns.add_dummy_prefix = m->add_dummy_prefix;
    ns.remove_extra_whitespaces = m->remove_extra_whitespaces;
    ns.escape_whitespaces = m->escape_whitespaces;
    mp.normalizer_spec = &ns;
    size_t n = sentencepiece__model_proto__get_packed_size(&mp);
    uint8_t *buf = xc_malloc(n ? n : 1);
    xc_status st = XC_OK;
    if (buf == NULL) {
        st = xc_errf(XC_ERR_NOMEM, "out of memory for a %zu-byte SentencePiece model", n);
    } else {
        size_t w = sentencepiece__model_proto__pack(&mp, buf);
        XC_ASSERT(w == n);
        *out = buf;
        *len = n;
    }
    xc_free(sp);
    xc_free(spp);
    return st;
}
